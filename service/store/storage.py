"""Content-addressed crop storage; uploads are checked by the one image policy of
``indexer.images`` (type by content, size and pixel limits)."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from indexer.images import FORMATS, BadImage, decode_image
from indexer.limits import ImageLimits

ImageRejected = BadImage  # the one image policy's refusal (``indexer.images``)


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
    """Decode fully and check an upload under the one image policy (``indexer.images``, which
    the indexer applies too); ``ImageRejected`` says why it is refused."""
    with decode_image(data, ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)) as im:
        fmt, (width, height) = im.format, im.size
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
