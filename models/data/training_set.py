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
from models.preprocess import Preprocess

log = logging.getLogger(__name__)


class CaptionedImages(Dataset):
    """Images decoded and resized once into memory; ``transform`` augments each access.

    An item is ``(image (3, H, W) float, caption str, class index int)``: by default one item
    per image with one of its captions drawn at random; with ``pairs`` one item per (image,
    caption) pair, so that an epoch passes over every caption once (the reference recipe).
    """

    def __init__(self, records: Sequence[Record], preprocess: Preprocess,
                 transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0,
                 pairs: bool = False) -> None:
        self.records = [r for r in records if r.captions]
        self.classes = remap_pids(self.records)
        self.pairs = [(i, c) for i, r in enumerate(self.records)
                      for c in range(len(r.captions))] if pairs else []
        owners = [i for i, _ in self.pairs] if pairs else range(len(self.records))
        self.labels = [self.classes[self.records[i].pid] for i in owners]
        self.transform = transform
        self.rng = random.Random(seed)
        log.info("decoding %d images at %s", len(self.records), preprocess.image_size)
        self.pixels = [load_resized(r.image_path, preprocess) for r in self.records]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        if self.pairs:
            image, caption_index = self.pairs[index]
            caption = self.records[image].captions[caption_index]
        else:
            image, caption = index, self.rng.choice(self.records[index].captions)
        return self.transform(self.pixels[image]), caption, self.labels[index]


def collate(items: list[tuple[torch.Tensor, str, int]], tokenize: Callable[[list[str]], Any]
            ) -> dict[str, Any]:
    images, captions, labels = zip(*items, strict=True)
    return {"images": torch.stack(images), "tokens": tokenize(list(captions)),
            "pids": torch.tensor(labels, dtype=torch.int64), "captions": list(captions)}
