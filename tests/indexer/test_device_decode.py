"""Decode and resize on the encoder's device (here the CPU path of the same code)."""

from __future__ import annotations

import torch

from indexer.device_decode import decode_resize
from indexer.reader import CropFiles
from tests.conftest import make_image

SIZE = (64, 32)


def test_jpegs_and_other_formats_match_the_reader_and_bad_files_fail_with_reasons(tmp_path):
    files = {1: make_image(1, fmt="JPEG"), 2: make_image(2, fmt="PNG"),
             3: make_image(3, fmt="JPEG")[:200],  # truncated
             4: b"", 5: make_image(5, size=(80, 40), fmt="JPEG"), 6: b"not an image"}
    out = decode_resize(list(files.items()), SIZE, "cpu")
    assert out.ids == [1, 2, 5] and out.images.shape == (3, 3, *SIZE)
    assert out.images.dtype == torch.uint8
    reasons = dict(out.failed)
    assert set(reasons) == {3, 4, 6}
    assert reasons[4] == "empty file" and "truncated" in reasons[3]
    assert reasons[6] == "unreadable: not an image"
    paths = []
    for crop_id in out.ids:
        path = tmp_path / f"{crop_id}.img"
        path.write_bytes(files[crop_id])
        paths.append((crop_id, path))
    reader = CropFiles(paths, SIZE)
    want = torch.stack([reader[i][1] for i in range(len(paths))])
    diff = (out.images.int() - want.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 8  # decoder rounding only


def test_nothing_decodable_is_an_empty_batch_of_the_right_shape():
    out = decode_resize([(7, b"\xff\xd8\xff broken")], SIZE, "cpu")
    assert out.ids == [] and out.images.shape == (0, 3, *SIZE) and out.failed[0][0] == 7
