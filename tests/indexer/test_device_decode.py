"""Decode and resize on the encoder's device (here the CPU path of the same code)."""

from __future__ import annotations

import torch

from indexer.device_decode import decode_resize
from indexer.limits import ImageLimits
from indexer.reader import CropFiles
from models.preprocess import Preprocess
from tests.conftest import make_image

SIZE = (64, 32)
PRE = Preprocess(SIZE, (0.5,) * 3, (0.25,) * 3)


def test_jpegs_and_other_formats_match_the_reader_and_bad_files_fail_with_reasons(tmp_path):
    files = {1: make_image(1, fmt="JPEG"), 2: make_image(2, fmt="PNG"),
             3: make_image(3, fmt="JPEG")[:200],  # truncated
             4: b"", 5: make_image(5, size=(80, 40), fmt="JPEG"), 6: b"not an image"}
    out = decode_resize(list(files.items()), PRE, "cpu")
    assert out.ids == [1, 2, 5] and out.images.shape == (3, 3, *SIZE)
    assert out.images.dtype == torch.uint8
    reasons = dict(out.failed)
    assert set(reasons) == {3, 4, 6}
    assert reasons[4] == "empty file" and "truncated" in reasons[3]
    assert reasons[6].startswith("unreadable: not an image")
    paths = []
    for crop_id in out.ids:
        path = tmp_path / f"{crop_id}.img"
        path.write_bytes(files[crop_id])
        paths.append((crop_id, path))
    reader = CropFiles(paths, PRE)
    want = torch.stack([reader[i][1] for i in range(len(paths))])
    diff = (out.images.int() - want.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 8  # decoder rounding only
    normalised = PRE.normalise(out.images)  # the same model input as the reader's, near enough
    assert normalised.shape == PRE.normalise(want).shape
    assert float((normalised - PRE.normalise(want)).abs().mean()) < 1.0 / (255 * 0.25)


def test_the_limits_are_the_readers():
    big = make_image(8, size=(80, 40), fmt="JPEG")
    out = decode_resize([(8, big)], PRE, "cpu", ImageLimits(max_pixels=80 * 40 - 1))
    assert out.ids == [] and out.failed[0][1].startswith("oversized: 80x40 pixels")
    out = decode_resize([(8, big)], PRE, "cpu", ImageLimits(max_bytes=len(big) - 1))
    assert out.ids == [] and out.failed[0][1].startswith("oversized:")


def test_nothing_decodable_is_an_empty_batch_of_the_right_shape():
    out = decode_resize([(7, b"\xff\xd8\xff broken")], PRE, "cpu")
    assert out.ids == [] and out.images.shape == (0, 3, *SIZE) and out.failed[0][0] == 7


def test_the_pipeline_decoding_on_the_device_indexes_what_the_reader_does(tmp_path,
                                                                          tiny_encoder):
    from indexer.pipeline import ReadOptions, StageTimes, encode_items

    items = []
    for i, data in enumerate([make_image(1, fmt="JPEG"), make_image(2), b"",
                              make_image(3, fmt="JPEG")[:150], make_image(4, fmt="JPEG")]):
        path = tmp_path / f"{i}.img"
        path.write_bytes(data)
        items.append((i + 1, path))
    items.append((9, tmp_path / "missing.jpg"))
    runs = {}
    for on_device in (False, True):
        options = ReadOptions(batch_size=4, workers=0, decode_on_device=on_device)
        runs[on_device] = encode_items(tiny_encoder, items, options, StageTimes())
    (ids_r, vec_r, bad_r), (ids_d, vec_d, bad_d) = runs[False], runs[True]
    assert ids_r.tolist() == ids_d.tolist() == [1, 2, 5]
    assert dict(bad_r) == dict(bad_d) and dict(bad_d)[9] == "missing file"
    assert float(abs(vec_r - vec_d).max()) < 0.05  # decoder rounding only
