"""Writer stage: embedding shards of a build in progress, then the arrays of a version.

A build writes into ``versions/.building-<checkpoint>/``: one folder per finished shard
(``ids.npy``, ``vectors.npy`` float16, ``failed.json``), each renamed into place after an
fsync. A killed build leaves only finished shards behind; the rerun skips the crops they hold.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.files import fsync_dir, fsync_tree, write_arrays

log = logging.getLogger(__name__)

__all__ = ["Shard", "ShardWriter", "merge_shards", "write_arrays"]


@dataclass
class Shard:
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, D) float16 (memmap)
    failed: list[tuple[int, str]]


class ShardWriter:
    """Appends finished shards to a build folder; knows which crops earlier runs finished."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".tmp-*"):  # a shard cut off by a kill
            shutil.rmtree(leftover)
        self._next = len(self.shard_dirs())

    def shard_dirs(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("shard-*") if p.is_dir())

    def done_ids(self) -> set[int]:
        """Crop ids finished by earlier runs (encoded or failed)."""
        done: set[int] = set()
        for shard in self.read_shards():
            done.update(shard.ids.tolist())
            done.update(cid for cid, _ in shard.failed)
        return done

    def write(self, ids: np.ndarray, vectors: np.ndarray, failed: list[tuple[int, str]]) -> Path:
        name = f"shard-{self._next:06d}"
        tmp = self.folder / f".tmp-{name}"
        tmp.mkdir()
        np.save(tmp / "ids.npy", np.asarray(ids, dtype=np.int64))
        np.save(tmp / "vectors.npy", np.asarray(vectors, dtype=np.float16))
        (tmp / "failed.json").write_text(json.dumps(failed))
        fsync_tree(tmp)
        tmp.rename(self.folder / name)
        fsync_dir(self.folder)
        self._next += 1
        log.debug("wrote %s: %d vectors, %d failed", name, len(ids), len(failed))
        return self.folder / name

    def read_shards(self) -> list[Shard]:
        shards = []
        for path in self.shard_dirs():
            failed = [(int(c), str(r)) for c, r in json.loads((path / "failed.json").read_text())]
            shards.append(Shard(np.load(path / "ids.npy"),
                                np.load(path / "vectors.npy", mmap_mode="r"), failed))
        return shards


def merge_shards(shards: list[Shard], keep: set[int], folder: Path,
                 dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the shards' rows whose crop id is in ``keep`` into ``folder``.

    Returns (ids (N,), vectors (N, D) float16 memmap) as written.
    """
    picks = []
    seen: set[int] = set()
    for shard in shards:
        mask = np.array([cid in keep and cid not in seen for cid in shard.ids.tolist()], bool)
        seen.update(shard.ids[mask].tolist())
        picks.append(mask)
    total = int(sum(m.sum() for m in picks))
    ids = np.empty(total, np.int64)
    out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16,
                                    shape=(total, dim))
    row = 0
    for shard, mask in zip(shards, picks, strict=True):
        n = int(mask.sum())
        ids[row : row + n] = shard.ids[mask]
        out[row : row + n] = shard.vectors[mask]
        row += n
    out.flush()
    np.save(folder / "ids.npy", ids)
    return ids, out
