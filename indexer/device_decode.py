"""Decode and resize on the encoder's device: JPEG bytes -> (B, 3, H, W) uint8 batches.

On CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` decodes a whole list of JPEGs with
nvjpeg and the resize runs there too, so the CPU only reads files. Anything nvjpeg refuses
(PNG, BMP, a CMYK or corrupt JPEG) is decoded on the CPU by ``indexer.reader.decode`` with its
limits and reasons. On the CPU the same code runs with torchvision's libjpeg decoder. The
resize is ``indexer.reader``'s (antialiased bicubic on uint8), so vectors match the reader's
up to decoder rounding.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2 as T

from indexer.reader import MAX_BYTES, MAX_PIXELS, BadImage, Batch, decode_bytes, read_crop

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


def _resize(size: tuple[int, int]) -> T.Resize:
    return T.Resize(tuple(size), antialias=True, interpolation=T.InterpolationMode.BICUBIC)


def _jpeg_batch(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """Decode many JPEGs in one call; on failure, one by one so a bad file only fails itself."""
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if not tensors:
        return []
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG within the reader's limits (its header read by PIL: no pixels decoded); the
    rest goes the CPU way, which says why it fails."""
    if data[:3] != JPEG_MAGIC or len(data) > MAX_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width * im.height <= MAX_PIXELS and im.mode in ("RGB", "L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _cpu_decode(data: bytes, device: torch.device) -> torch.Tensor:
    """(3, H, W) uint8 via PIL (the reader's checks and reasons), moved to ``device``."""
    image = decode_bytes(data)
    return T.functional.pil_to_tensor(image).to(device)


def decode_resize(items: Sequence[tuple[int, bytes]], size: tuple[int, int],
                  device: torch.device | str) -> Batch:
    """(crop id, file bytes) pairs -> the resized batch on ``device``, failures with reasons."""
    device = torch.device(device)
    resize = _resize(size)
    jpeg = [i for i, (_, d) in enumerate(items) if _plain_jpeg(d)]
    images: dict[int, torch.Tensor] = {}
    for i, img in zip(jpeg, _jpeg_batch([items[i][1] for i in jpeg], device), strict=True):
        if img is not None:
            images[i] = img
    failed: list[tuple[int, str]] = []
    for i, (crop_id, data) in enumerate(items):
        if i in images:
            continue
        try:
            images[i] = _cpu_decode(data, device)
        except BadImage as exc:
            failed.append((crop_id, str(exc)))
    order = sorted(images)
    if not order:
        return Batch([], torch.zeros((0, 3, *size), dtype=torch.uint8, device=device), failed)
    batch = torch.stack([resize(images[i]) for i in order])  # (B, 3, H, W) uint8
    return Batch([items[i][0] for i in order], batch, failed)


class CropBytes(Dataset):
    """(crop id, path) pairs -> (crop id, file bytes or None, reason or None): workers only
    read; decoding waits for the device."""

    def __init__(self, items: Sequence[tuple[int, Path]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, bytes | None, str | None]:
        crop_id, path = self.items[i]
        try:
            return crop_id, read_crop(path), None
        except BadImage as exc:
            return crop_id, None, str(exc)


def _keep(samples: list) -> list:
    return samples


def device_batches(items: Sequence[tuple[int, Path]], size: tuple[int, int],
                   device: torch.device | str, *, batch_size: int = 256,
                   workers: int = 4) -> Iterator[Batch]:
    """Files read in ``workers`` processes (0: here), each batch decoded on ``device``."""
    loader = DataLoader(CropBytes(items), batch_size=batch_size, num_workers=workers,
                        collate_fn=_keep, prefetch_factor=4 if workers else None)
    for samples in loader:
        unread = [(cid, reason) for cid, data, reason in samples if data is None]
        batch = decode_resize([(cid, d) for cid, d, _ in samples if d is not None], size, device)
        batch.failed = unread + batch.failed
        yield batch
