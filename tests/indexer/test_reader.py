"""Reader and encoder stages on tiny fixtures."""

import io

import numpy as np
import pytest
from PIL import Image

from indexer.encode import encode_batch
from indexer.reader import BadImage, decode, read_batches
from tests.conftest import make_image


@pytest.fixture
def files(tmp_path):
    """Four good crops and one of each kind of bad input."""
    paths = {}
    for i in range(4):
        paths[i] = tmp_path / f"good{i}.png"
        paths[i].write_bytes(make_image(i))
    paths[10] = tmp_path / "truncated.jpg"
    paths[10].write_bytes(make_image(5, fmt="JPEG")[:300])
    paths[11] = tmp_path / "empty.png"
    paths[11].write_bytes(b"")
    paths[12] = tmp_path / "text.png"
    paths[12].write_text("not an image at all")
    paths[13] = tmp_path / "missing.png"
    big = io.BytesIO()
    Image.new("RGB", (300, 300)).save(big, format="PNG")
    paths[14] = tmp_path / "huge.png"
    paths[14].write_bytes(big.getvalue())
    return paths


@pytest.mark.parametrize(("key", "reason"), [(10, "truncated"), (11, "empty"),
                                             (12, "not an image"), (13, "missing"),
                                             (14, "oversized")])
def test_bad_inputs_say_why(files, key, reason):
    with pytest.raises(BadImage, match=reason):
        decode(files[key], max_pixels=200 * 200)


def test_oversized_in_bytes(files):
    with pytest.raises(BadImage, match="oversized"):
        decode(files[0], max_bytes=100)


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_keeps_order_and_reports_failures(files, workers):
    items = sorted(files.items())
    batches = list(read_batches(items, (32, 16), batch_size=3, workers=workers,
                                max_pixels=200 * 200))
    ids = [i for b in batches for i in b.ids]
    failed = dict(f for b in batches for f in b.failed)
    assert ids == [0, 1, 2, 3] and sorted(failed) == [10, 11, 12, 13, 14]
    assert all(b.images.dtype.is_floating_point is False for b in batches)
    assert {tuple(b.images.shape[1:]) for b in batches if len(b.ids)} == {(3, 32, 16)}


def test_encoder_stage_matches_the_encoder_on_pil_images(files, tiny_encoder):
    items = [(i, files[i]) for i in range(4)]
    h, w = tiny_encoder.spec.image_size
    batch = next(iter(read_batches(items, (h, w), batch_size=4, workers=0)))
    got = encode_batch(tiny_encoder, batch.images)  # (4, D)
    want = tiny_encoder.encode_image([Image.open(files[i]) for i in range(4)])
    assert got.shape == (4, tiny_encoder.spec.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
