"""Reader and encoder stages on tiny fixtures."""

import io

import numpy as np
import pytest
from PIL import Image

from indexer.encode import encode_batch
from indexer.limits import ImageLimits
from indexer.pipeline import ReadOptions, StageTimes, encode_items
from indexer.reader import BadImage, decode, read_batches
from models.factory import create_model
from models.onnx_encoder import OnnxEncoder
from models.preprocess import Preprocess
from tests.conftest import make_image

SMALL = ImageLimits(max_pixels=200 * 200)
PRE = Preprocess((32, 16), (0.5,) * 3, (0.25,) * 3)


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
        decode(files[key], SMALL)


def test_oversized_in_bytes(files):
    with pytest.raises(BadImage, match="oversized"):
        decode(files[0], ImageLimits(max_bytes=100))


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_keeps_order_and_reports_failures(files, workers):
    items = sorted(files.items())
    batches = list(read_batches(items, PRE, batch_size=3, workers=workers, limits=SMALL))
    ids = [i for b in batches for i in b.ids]
    failed = dict(f for b in batches for f in b.failed)
    assert ids == [0, 1, 2, 3] and sorted(failed) == [10, 11, 12, 13, 14]
    assert all(b.images.dtype.is_floating_point is False for b in batches)
    assert {tuple(b.images.shape[1:]) for b in batches if len(b.ids)} == {(3, 32, 16)}


@pytest.fixture(scope="module")
def onnx_encoder(tmp_path_factory):
    """The tiny stand-in under ONNX Runtime (exported once for the module)."""
    return OnnxEncoder(create_model("tiny-clip"), "untrained-tiny-clip-seed0",
                       tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("engine", ["torch", "onnx"])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_indexer_gives_the_encoders_own_vectors_bit_for_bit(request, files, engine,
                                                                workers):
    """Reader processes (resize) + encoder stage (normalise) == ``encode_image`` on the file."""
    encoder = request.getfixturevalue("tiny_encoder" if engine == "torch" else "onnx_encoder")
    items = [(i, files[i]) for i in range(4)]
    ids, got, failed = encode_items(encoder, items, ReadOptions(batch_size=4, workers=workers),
                                    StageTimes())
    want = encoder.encode_image([Image.open(files[i]) for i in range(4)])
    assert list(ids) == [0, 1, 2, 3] and not failed
    assert got.shape == (4, encoder.spec.dim) and got.dtype == np.float32
    assert np.array_equal(got, want)
    batch = next(iter(read_batches(items, encoder.preprocess, batch_size=4, workers=0)))
    assert np.array_equal(encode_batch(encoder, batch.images), want)


def test_the_read_options_limits_are_the_ones_applied(files):
    """A limit just below a crop fails it, saying the limit; just at its size passes it."""
    items = [(0, files[0])]  # 48x96
    size = files[0].stat().st_size
    for limits, reason in ((ImageLimits(max_pixels=48 * 96 - 1), "48x96 pixels; the limit is 4607"),
                           (ImageLimits(max_bytes=size - 1), f"bytes; the limit is {size - 1}")):
        batch = next(iter(read_batches(items, PRE, workers=0, limits=limits)))
        assert batch.ids == [] and reason in batch.failed[0][1], batch.failed
    at_size = ImageLimits(max_bytes=files[0].stat().st_size, max_pixels=48 * 96)
    assert next(iter(read_batches(items, PRE, workers=0, limits=at_size))).ids == [0]


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_pixels=0)
