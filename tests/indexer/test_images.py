"""The one image policy: uploads (``service.store.storage.check_image``) and the indexer's reader
(``indexer.reader.decode_bytes``) accept and refuse the same contents, for the same reason."""

import io

import pytest
from PIL import Image

from indexer.images import BadImage, decode_image
from indexer.limits import ImageLimits
from indexer.reader import decode_bytes
from service.store import storage
from tests.conftest import make_image

LIMITS = ImageLimits(max_bytes=50_000, max_pixels=100 * 100)


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 96), "red").save(buf, format="GIF")
    return buf.getvalue()


def _tiny() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 96), "red").save(buf, format="PNG")
    return buf.getvalue()


REFUSED = [
    (b"", "empty file"),
    (b"plain text", "unreadable: not an image"),
    (make_image(1, fmt="JPEG")[:300], "unreadable: corrupt or truncated"),
    (_gif(), "unsupported image type GIF"),
    (_tiny(), "image is 4x96 pixels; crops must be at least 8x8"),
    (make_image(2, size=(120, 120)), "oversized: 120x120 pixels; the limit is 10000 pixels"),
    (b"\x89PNG" + bytes(60_000), "oversized: 60004 bytes; the limit is 50000 bytes"),
]


@pytest.mark.parametrize("data, reason", REFUSED, ids=[r for _, r in REFUSED])
def test_uploads_and_the_indexer_refuse_alike(data, reason):
    with pytest.raises(BadImage) as upload:
        storage.check_image(data, max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    with pytest.raises(BadImage) as indexer:
        decode_bytes(data, LIMITS)
    assert str(upload.value) == str(indexer.value) and str(upload.value).startswith(reason)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_uploads_and_the_indexer_accept_alike(fmt):
    data = make_image(3, fmt=fmt)
    checked = storage.check_image(data, max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels)
    assert (checked.format, checked.width, checked.height) == (fmt, 48, 96)
    rgb = decode_bytes(data, LIMITS)
    assert rgb.mode == "RGB" and rgb.size == (48, 96)
    assert decode_image(data, LIMITS).format == fmt
