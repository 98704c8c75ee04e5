"""Identity-balanced batches: P person ids x K images each."""

from __future__ import annotations

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
