"""Reader stage: crop files -> decoded, resized uint8 batches, in parallel worker processes.

Workers return the uint8 (3, H, W) tensors of the encoder's own ``preprocess.pixels`` (the
``Preprocess`` object pickles into them); the encoder stage runs ``preprocess.normalise`` on
the batch on its device. uint8 keeps inter-process traffic 4x smaller than float. Bad files
(missing, empty, over the ``ImageLimits``, truncated, not an image) come back as failures with
a reason; they never stop the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from indexer.images import BadImage, decode_rgb
from indexer.limits import ImageLimits
from models.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass
class Batch:
    ids: list[int]  # crops decoded, in order
    images: torch.Tensor  # (B, 3, H, W) uint8
    failed: list[tuple[int, str]]  # (crop id, reason)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when feeding a CUDA encoder."""
        self.images = self.images.pin_memory()
        return self


def read_crop(path: Path) -> bytes:
    """One crop file's content, or ``BadImage`` saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except OSError as exc:
        raise BadImage(f"unreadable file: {exc}") from None


def decode(path: Path, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Read and fully decode one crop as RGB, or raise ``BadImage`` saying why."""
    return decode_bytes(read_crop(path), limits)


def decode_bytes(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Fully decode one crop's file content as RGB under the one image policy
    (``indexer.images``), or raise ``BadImage`` saying why."""
    return decode_rgb(data, limits)


class CropFiles(Dataset):
    """(crop id, path) pairs -> (crop id, (3, H, W) uint8 or None, reason or None)."""

    def __init__(self, items: Sequence[tuple[int, Path]], preprocess: Preprocess,
                 limits: ImageLimits = ImageLimits()) -> None:
        self.items = list(items)
        self.preprocess, self.limits = preprocess, limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        crop_id, path = self.items[i]
        try:
            return crop_id, self.preprocess.pixels(decode(path, self.limits)), None
        except BadImage as exc:
            return crop_id, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad crop must not stop the run
            return crop_id, None, f"unreadable: {type(exc).__name__}: {exc}"


def collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    ok = [(cid, img) for cid, img, _ in samples if img is not None]
    failed = [(cid, reason) for cid, img, reason in samples if img is None]
    if not ok:
        return Batch([], torch.zeros((0, 3, 1, 1), dtype=torch.uint8), failed)
    images = torch.stack([img for _, img in ok])  # (B, 3, H, W) uint8
    return Batch([cid for cid, _ in ok], images, failed)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the encoder owns the cores; workers only decode


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def read_batches(items: Sequence[tuple[int, Path]], preprocess: Preprocess, *,
                 batch_size: int = 64, workers: int | None = None, pin_memory: bool = False,
                 limits: ImageLimits = ImageLimits()) -> Iterator[Batch]:
    """Decode and resize crops in ``workers`` processes (0: in this process), in order."""
    workers = default_workers() if workers is None else workers
    dataset = CropFiles(items, preprocess, limits)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        worker_init_fn=_worker_init if workers else None, pin_memory=pin_memory,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    yield from loader
