"""The one image policy: which file contents count as a crop, for uploads and the indexer alike.

A crop is a JPEG, PNG, BMP or WebP file within the ``ImageLimits`` (bytes and pixels), at least
``MIN_SIDE`` pixels on each side, that decodes fully (a truncated file is refused). The service
checks uploads with ``decode_image`` and the indexer's reader decodes stored crops with it, so
that a file the one accepts is never refused by the other, with the same reason for both.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from indexer.limits import ImageLimits

# Accepted formats as Pillow names them, and the extension a stored crop gets.
FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}
MIN_SIDE = 8
SEND = "send JPEG, PNG, BMP or WebP"


class BadImage(ValueError):
    """Content that is not a crop we accept; the message says why (it is shown to the uploader
    and stored as a failed crop's error)."""


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Fully decode ``data`` under the policy: the image in its own mode, ``format`` one of
    ``FORMATS``; or ``BadImage`` saying why it is refused."""
    if not data:
        raise BadImage("empty file")
    if len(data) > limits.max_bytes:
        raise BadImage(f"oversized: {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # a BytesIO: nothing to close
            _check_header(im, limits)
            im.load()  # full decode: catches truncated files
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"oversized: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(f"unreadable: not an image ({SEND})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"unreadable: corrupt or truncated image ({exc})") from None
    return im


def _check_header(im: Image.Image, limits: ImageLimits) -> None:
    """Format and size, from the header alone (before any pixel is decoded)."""
    width, height = im.size
    if im.format not in FORMATS:
        raise BadImage(f"unsupported image type {im.format}; {SEND}")
    if width * height > limits.max_pixels:
        raise BadImage(f"oversized: {width}x{height} pixels; the limit is {limits.max_pixels} "
                       "pixels")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise BadImage(f"image is {width}x{height} pixels; crops must be at least "
                       f"{MIN_SIDE}x{MIN_SIDE}")


def decode_rgb(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """``decode_image`` converted to RGB, as encoders take it."""
    return decode_image(data, limits).convert("RGB")
