"""Content-addressed crop storage and image validation (type by content, size and pixel limits)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Accepted formats as Pillow names them, and the extension we store them under.
FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}


class ImageRejected(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    format: str  # one of FORMATS
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FORMATS[self.format]


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Decode fully and check an upload; ``ImageRejected`` says why it is refused."""
    if not data:
        raise ImageRejected("empty file")
    if len(data) > max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format, im.size
                if fmt not in FORMATS:
                    raise ImageRejected(f"unsupported image type {fmt}; "
                                        "send JPEG, PNG, BMP or WebP")
                if width * height > max_pixels:
                    raise ImageRejected(f"image is {width}x{height} pixels; the limit is "
                                        f"{max_pixels} pixels")
                im.load()  # full decode: catches truncated files
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (send JPEG, PNG, BMP or WebP)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    if width < 8 or height < 8:
        raise ImageRejected(f"image is {width}x{height} pixels; crops must be at least 8x8")
    return CheckedImage(data, hashlib.sha256(data).hexdigest(), fmt, width, height)


def relative_path(image: CheckedImage) -> str:
    """Where a crop lives under the crops folder: ``ab/cd/<sha256>.<ext>``."""
    sha = image.sha256
    return f"{sha[:2]}/{sha[2:4]}/{sha}.{image.extension}"


class StorageError(OSError):
    """The crops folder cannot take a write: ``full`` (no space, quota) or not writable."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


def storage_error(exc: OSError, doing: str) -> StorageError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the disk is full" if full else f"the crops folder is not writable ({exc.strerror})"
    return StorageError(f"could not {doing}: {why}", full=full)


def store(image: CheckedImage, crops_dir: Path) -> tuple[str, bool]:
    """Write the crop once (temp file, fsync, rename). Returns its path relative to crops_dir
    and whether this call wrote it. Raises ``StorageError``, leaving no temp file behind."""
    rel = relative_path(image)
    target = crops_dir / rel
    if target.exists():
        return rel, False
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")  # unique per call
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            fh.write(image.data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, "store the crop") from exc
    return rel, True


def remove(rel: str, crops_dir: Path) -> None:
    """Raises ``StorageError`` when the file is there and cannot be removed."""
    try:
        (crops_dir / rel).unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(exc, "remove the crop file") from exc
