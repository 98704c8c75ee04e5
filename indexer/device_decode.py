"""Decode and resize on the encoder's device: JPEG bytes -> (B, 3, H, W) uint8 batches.

On CUDA, ``torchvision.io.decode_jpeg(device="cuda")`` decodes a whole list of JPEGs with
nvjpeg and the resize runs there too, so the CPU only reads files. Anything nvjpeg refuses
(PNG, BMP, a CMYK or corrupt JPEG) is decoded on the CPU by ``indexer.reader.decode_bytes`` with
its ``ImageLimits`` and reasons. On the CPU the same code runs with torchvision's libjpeg
decoder. The resize is the encoder's own ``Preprocess.pixels`` (the reader workers' too), so
sizes and the later ``normalise`` are the same and vectors match the reader's up to decoder
rounding.
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

from indexer.images import MIN_SIDE, BadImage
from indexer.limits import ImageLimits
from indexer.reader import Batch, decode_bytes, read_crop
from models.preprocess import Preprocess

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


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


def _plain_jpeg(data: bytes, limits: ImageLimits) -> bool:
    """A JPEG within the reader's limits (its header read by PIL: no pixels decoded); the
    rest goes the CPU way, which says why it fails."""
    if data[:3] != JPEG_MAGIC or len(data) > limits.max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.width * im.height <= limits.max_pixels and im.mode in ("RGB", "L")
                    and min(im.size) >= MIN_SIDE)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _cpu_decode(data: bytes, device: torch.device, limits: ImageLimits) -> torch.Tensor:
    """(3, H, W) uint8 via PIL (the reader's checks and reasons), moved to ``device``."""
    image = decode_bytes(data, limits)
    return T.functional.pil_to_tensor(image).to(device)


def decode_resize(items: Sequence[tuple[int, bytes]], preprocess: Preprocess,
                  device: torch.device | str, limits: ImageLimits = ImageLimits()) -> Batch:
    """(crop id, file bytes) pairs -> the batch ``preprocess.pixels`` makes, on ``device``,
    failures with reasons."""
    device = torch.device(device)
    jpeg = [i for i, (_, d) in enumerate(items) if _plain_jpeg(d, limits)]
    images: dict[int, torch.Tensor] = {}
    for i, img in zip(jpeg, _jpeg_batch([items[i][1] for i in jpeg], device), strict=True):
        if img is not None:
            images[i] = img
    failed: list[tuple[int, str]] = []
    for i, (crop_id, data) in enumerate(items):
        if i in images:
            continue
        try:
            images[i] = _cpu_decode(data, device, limits)
        except BadImage as exc:
            failed.append((crop_id, str(exc)))
    order = sorted(images)
    if not order:
        return Batch([], torch.zeros((0, 3, *preprocess.image_size), dtype=torch.uint8,
                                     device=device), failed)
    batch = torch.stack([preprocess.pixels(images[i]) for i in order])  # (B, 3, H, W) uint8
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


def device_batches(items: Sequence[tuple[int, Path]], preprocess: Preprocess,
                   device: torch.device | str, *, batch_size: int = 256, workers: int = 4,
                   limits: ImageLimits = ImageLimits()) -> Iterator[Batch]:
    """Files read in ``workers`` processes (0: here), each batch decoded on ``device``."""
    loader = DataLoader(CropBytes(items), batch_size=batch_size, num_workers=workers,
                        collate_fn=_keep, prefetch_factor=4 if workers else None)
    for samples in loader:
        unread = [(cid, reason) for cid, data, reason in samples if data is None]
        batch = decode_resize([(cid, d) for cid, d, _ in samples if d is not None], preprocess,
                              device, limits)
        batch.failed = unread + batch.failed
        yield batch
