"""Cached-trunk training: the frozen leading stages of both backbones run once per dataset.

A model's trunk (``image_trunk`` / ``text_trunk``: stem and frozen blocks, embeddings and frozen
layers) is deterministic in eval mode, so its outputs for every training image (and its
horizontal flip) and every caption are computed once, stored float16 in RAM and under
``runs/cache/<hash>.pt`` (shared by runs with the same trunk, image size and data), and training
then runs only the upper stages and heads on them. Pixel augmentations become feature-level
ones: the flipped copy at random, a shift by up to ``shift`` cells with zero padding (pad and
crop) and random erasing of a rectangle of the feature grid.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.data.training_set import CaptionedImages
from models.preprocess import Preprocess

log = logging.getLogger(__name__)


def cache_key(model: Any, dataset: CaptionedImages, data: dict[str, Any]) -> str:
    """Hash of the trunk config, image size and the dataset split (its image paths)."""
    paths = hashlib.sha256("\n".join(str(r.image_path) for r in dataset.records).encode())
    spec = {"trunk": model.trunk_spec(), "dataset": data.get("dataset", "cuhk-pedes"),
            "split": data.get("split"), "images": paths.hexdigest(), "format": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def compute_trunk_cache(model: Any, dataset: CaptionedImages, batch_size: int = 64
                        ) -> dict[str, Any]:
    """Trunk outputs of every image, flipped image and caption, float16, in eval mode."""
    was_training = model.training
    model.eval()
    normalise = Preprocess.of(model.config).normalise
    images, flipped = [], []
    for start in range(0, len(dataset), batch_size):
        pixels = torch.stack([normalise(p) for p in dataset.pixels[start:start + batch_size]])
        images.append(model.image_trunk(pixels).half())  # (b, C, h, w)
        flipped.append(model.image_trunk(pixels.flip(-1)).half())
        if start // batch_size % 10 == 9:
            log.info("trunk cache: %d/%d images", start + len(pixels), len(dataset))
    captions = [c for r in dataset.records for c in r.captions]
    offsets = torch.tensor([0, *[len(r.captions) for r in dataset.records]]).cumsum(0)
    hidden, masks = [], []
    for start in range(0, len(captions), batch_size):
        out = model.text_trunk(model.tokenize(captions[start:start + batch_size]))
        hidden.append(out["hidden_states"].half())  # (b, L, H)
        masks.append(out["attention_mask"])  # (b, L)
    length = max(m.shape[1] for m in masks)
    hidden = [F.pad(h * m.unsqueeze(-1), (0, 0, 0, length - h.shape[1]))
              for h, m in zip(hidden, masks, strict=True)]
    masks = [F.pad(m, (0, length - m.shape[1])) for m in masks]
    model.train(was_training)
    return {"images": torch.cat(images), "flipped": torch.cat(flipped),
            "hidden_states": torch.cat(hidden), "attention_mask": torch.cat(masks).to(torch.int8),
            "caption_offsets": offsets}


def load_or_build_cache(model: Any, dataset: CaptionedImages, path: Path) -> dict[str, Any]:
    """Load ``path`` (memory-mapped, so concurrent runs share pages), or build and write it.

    Builders hold an exclusive ``flock`` on ``<path>.lock``: a second run waits for the first
    instead of rebuilding, and a killed builder's lock dies with its process (a stale lock file
    left behind never blocks anyone).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("trunk cache: another run is building %s; waiting for it", path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            log.info("trunk cache: loading %s", path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        started = time.time()
        cache = compute_trunk_cache(model, dataset)
        tmp = path.with_suffix(".tmp")
        torch.save(cache, tmp)
        tmp.replace(path)
    log.info("trunk cache: %d images %s, %d captions %s in %.0fs -> %s", len(dataset),
             tuple(cache["images"].shape[1:]), cache["hidden_states"].shape[0],
             tuple(cache["hidden_states"].shape[1:]), time.time() - started, path)
    return cache


def shift_features(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random translation by up to ``shift`` cells, zero padded: (B, C, h, w)."""
    if not shift:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, h + 2s, w + 2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def erase_features(x: torch.Tensor, p: float, gen: torch.Generator,
                   scale: tuple[float, float] = (0.02, 0.4),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (value 0) of one rectangle of the grid per sample with probability p."""
    x = x.clone()
    b, _, h, w = x.shape
    for i in range(b):
        if torch.rand((), generator=gen).item() >= p:
            continue
        u = torch.rand(2, generator=gen).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
        eh = min(h, max(1, round(math.sqrt(area * aspect))))
        ew = min(w, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - eh + 1, (), generator=gen))
        left = int(torch.randint(0, w - ew + 1, (), generator=gen))
        x[i, :, top:top + eh, left:left + ew] = 0
    return x


class CachedTrunkLoader:
    """Batches of cached trunk outputs, drawn by the trainer's P x K ``sampler``.

    Yields ``{"images", "tokens", "pids", "from_trunk": True}``, where ``images`` is
    (B, C, h, w) and ``tokens`` holds ``hidden_states`` (B, L, H) and ``attention_mask`` (B, L).
    """

    def __init__(self, cache: dict[str, Any], labels: Sequence[int], sampler: Any,
                 shift: int = 1, erase_p: float = 0.5, seed: int = 0) -> None:
        self.cache, self.labels, self.sampler = cache, torch.tensor(labels), sampler
        self.shift, self.erase_p = shift, erase_p
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for indices in self.sampler:
            yield self.batch(torch.tensor(indices))

    def batch(self, idx: torch.Tensor) -> dict[str, Any]:
        c, b = self.cache, len(idx)
        flip = torch.rand(b, generator=self.gen) < 0.5
        images = torch.where(flip[:, None, None, None], c["flipped"][idx], c["images"][idx])
        images = shift_features(images.float(), self.shift, self.gen)
        images = erase_features(images, self.erase_p, self.gen)  # (B, C, h, w)
        first, count = c["caption_offsets"][idx], c["caption_offsets"][idx + 1] - \
            c["caption_offsets"][idx]
        rows = first + (torch.rand(b, generator=self.gen) * count).long()  # a random caption
        mask = c["attention_mask"][rows].long()  # (B, Lmax)
        length = int(mask.sum(1).max())
        tokens = {"hidden_states": c["hidden_states"][rows, :length].float(),  # (B, L, H)
                  "attention_mask": mask[:, :length]}
        return {"images": images, "tokens": tokens, "pids": self.labels[idx],
                "from_trunk": True}


def cached_trunk_loader(model: Any, dataset: CaptionedImages, sampler: Any,
                        data: dict[str, Any], cache_dir: Path, shift: int = 1,
                        erase_p: float = 0.5, seed: int = 0) -> CachedTrunkLoader:
    """The loader for ``train.cache_trunk``: cache found or built, then feature batches."""
    for name, backbone in (("image", model.visual), ("text", model.textual)):
        if backbone.frozen_stages < 1:
            raise ValueError(f"cache_trunk needs a frozen {name} trunk (frozen_stages >= 1)")
    path = Path(cache_dir) / f"{cache_key(model, dataset, data)}.pt"
    cache = load_or_build_cache(model, dataset, path)
    return CachedTrunkLoader(cache, dataset.labels, sampler, shift, erase_p, seed)
