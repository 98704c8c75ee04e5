import io

import numpy as np
import pytest
from PIL import Image

from service.store import storage

LIMITS = dict(max_bytes=200_000, max_pixels=300 * 300)


def test_accepts_each_supported_format(image_bytes):
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("WEBP", "webp")):
        checked = storage.check_image(image_bytes(1, fmt=fmt), **LIMITS)
        assert (checked.format, checked.extension, checked.width, checked.height) == (
            fmt, ext, 48, 96)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, this is text", "not an image"),
])
def test_rejects_non_images(data, reason):
    with pytest.raises(storage.ImageRejected, match=reason):
        storage.check_image(data, **LIMITS)


def test_rejects_truncated(image_bytes):
    data = image_bytes(3, size=(120, 240), fmt="JPEG")
    with pytest.raises(storage.ImageRejected, match="truncated"):
        storage.check_image(data[: len(data) // 2], **LIMITS)


def test_rejects_unsupported_type():
    buf = io.BytesIO()
    Image.new("RGB", (32, 64)).save(buf, format="GIF")
    with pytest.raises(storage.ImageRejected, match="unsupported image type GIF"):
        storage.check_image(buf.getvalue(), **LIMITS)


def test_rejects_too_many_bytes_and_pixels(image_bytes):
    with pytest.raises(storage.ImageRejected, match="the limit is 100 bytes"):
        storage.check_image(image_bytes(1), max_bytes=100, max_pixels=10**6)
    with pytest.raises(storage.ImageRejected, match="pixels; the limit"):
        storage.check_image(image_bytes(1), max_bytes=10**6, max_pixels=48 * 96 - 1)


def test_rejects_decompression_bomb():
    # a 20000x20000 PNG compresses to a few hundred KB but would decode to 1.2 GB
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(storage.ImageRejected):
        storage.check_image(buf.getvalue(), max_bytes=10**8, max_pixels=10**9)


def test_rejects_tiny_images():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(storage.ImageRejected, match="at least 8x8"):
        storage.check_image(buf.getvalue(), **LIMITS)


def test_store_is_content_addressed_and_idempotent(tmp_path, image_bytes):
    checked = storage.check_image(image_bytes(5), **LIMITS)
    rel, wrote = storage.store(checked, tmp_path)
    assert wrote
    assert rel == f"{checked.sha256[:2]}/{checked.sha256[2:4]}/{checked.sha256}.png"
    assert (tmp_path / rel).read_bytes() == checked.data
    assert storage.store(checked, tmp_path) == (rel, False)
    assert not list(tmp_path.rglob("*.tmp"))
    storage.remove(rel, tmp_path)
    assert not (tmp_path / rel).exists()
