"""The training set: one item per image, paired with one of its captions drawn at random."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from models.data.datasets import Record, remap_pids
from models.data.transforms import load_resized

log = logging.getLogger(__name__)


class CaptionedImages(Dataset):
    """Images decoded and resized once into memory; ``transform`` augments each access.

    An item is ``(image (3, H, W) float, caption str, class index int)``.
    """

    def __init__(self, records: Sequence[Record], image_size: Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> None:
        self.records = [r for r in records if r.captions]
        self.classes = remap_pids(self.records)
        self.labels = [self.classes[r.pid] for r in self.records]
        self.transform = transform
        self.rng = random.Random(seed)
        log.info("decoding %d images at %s", len(self.records), tuple(image_size))
        self.pixels = [load_resized(r.image_path, image_size) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        caption = self.rng.choice(self.records[index].captions)
        return self.transform(self.pixels[index]), caption, self.labels[index]


def collate(items: list[tuple[torch.Tensor, str, int]], tokenize: Callable[[list[str]], Any]
            ) -> dict[str, Any]:
    images, captions, labels = zip(*items, strict=True)
    return {"images": torch.stack(images), "tokens": tokenize(list(captions)),
            "pids": torch.tensor(labels, dtype=torch.int64), "captions": list(captions)}
