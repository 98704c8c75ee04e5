"""Batch samplers: identity-balanced (P person ids x K images each) or plain random batches,
and ``ResumableBatches``, which restarts an epoch part-way for ``tbps train --resume``."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class IdentityBalancedSampler(Sampler[list[int]]):
    """Yields batches of ``p * k`` item indices: ``p`` random ids, ``k`` items of each.

    Ids with fewer than ``k`` items are sampled with replacement. An epoch visits every id once
    (``len(ids) // p`` batches); ``set_epoch`` reseeds the shuffle.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.by_pid[pid].append(index)
        if len(self.by_pid) < p:
            raise ValueError(f"{len(self.by_pid)} ids cannot fill batches of {p} ids")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.by_pid) // self.p

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        ids = sorted(self.by_pid)
        rng.shuffle(ids)
        for start in range(0, len(self) * self.p, self.p):
            batch: list[int] = []
            for pid in ids[start : start + self.p]:
                items = self.by_pid[pid]
                if len(items) >= self.k:
                    batch.extend(rng.sample(items, self.k))
                else:
                    batch.extend(rng.choices(items, k=self.k))
            yield batch


class RandomBatchSampler(Sampler[list[int]]):
    """Every item once per epoch in a random order, in batches of ``batch_size`` (the last,
    short batch dropped); the order is a function of ``seed`` and ``set_epoch``."""

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        if size < batch_size:
            raise ValueError(f"{size} items cannot fill a batch of {batch_size}")
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.size))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


class ResumableBatches(Sampler[list[int]]):
    """A batch sampler whose next epoch starts after its first ``skip`` batches: the batches
    are the same as without it, so a resumed run sees exactly what the interrupted one would."""

    def __init__(self, sampler: IdentityBalancedSampler | RandomBatchSampler) -> None:
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)
