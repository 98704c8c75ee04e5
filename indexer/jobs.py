"""The indexer's side of index jobs: crops in as (id, path), vectors into a backend, a report
out. No database here: the service (``service.jobs.index_jobs``) chooses the crops and records
what happened, through the arguments and callbacks these functions take.

- ``encode_gallery``: encode crops into resumable shards (a killed run's shards are reused);
- ``build_from_shards``: write the shards' rows as a new version (not yet live);
- ``add_in_chunks``: make crops searchable chunk by chunk as generations of the live version;
- ``compact_live``: merge the live version's generations into a new base, no re-encoding;
- ``resume_unfinished``: clean what a killed build left, say whether one is left to resume.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.backends.base import BuildBusy, IndexBackend, Rows
from indexer.filters import attribute_arrays
from indexer.pipeline import (
    LoggedProgress,
    Progress,
    ReadOptions,
    StageTimes,
    encode_items,
    encode_to_shards,
)
from indexer.spec import DEFAULT_FACTORY
from indexer.writer import Shard, ShardWriter
from models.encoder import Encoder

log = logging.getLogger(__name__)

__all__ = ["ADD_CHUNK", "COMPACT_GENERATIONS", "DEFAULT_FACTORY", "FIRST_CHUNK", "SHARD_SIZE",
           "Attributes", "BuildBusy", "BuildReport", "ChunkDone", "StaleIndex", "add_in_chunks",
           "build_from_shards", "chunk_bounds", "compact_live", "diff_ids", "encode_gallery",
           "resumable_writer", "resume_unfinished", "sha_tag", "with_attributes"]

SHARD_SIZE = 4096
FIRST_CHUNK = 32  # crops in the first published generation: searchable within seconds
ADD_CHUNK = 256  # most crops per published generation when adding many (chunks double up to it)
COMPACT_GENERATIONS = 256  # more generations than this: merge them into a new base

Items = Sequence[tuple[int, Path]]
# called after each published chunk: (crop ids now searchable, failures, the new base version
# when the chunk created the index, else None)
ChunkDone = Callable[[np.ndarray, list[tuple[int, str]], str | None], None]
# crop ids (N,) -> {attribute name: (N,) values} (names from ``indexer.filters.ATTRIBUTES``:
# camera id, capture time, height ..., unknown as each attribute says): what a backend that
# filters inside its engine stores with each row. The caller (the service) reads them from its
# tables; None: rows carry vectors only.
Attributes = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def with_attributes(rows: Rows, attributes: Attributes | None) -> Rows:
    """``rows`` with each crop's attributes from ``attributes`` (as given when None)."""
    if attributes is None or not len(rows):
        return rows
    return Rows(rows.ids, rows.vectors, attribute_arrays(len(rows), attributes(rows.ids)))


class StaleIndex(RuntimeError):
    """The live index was built by another checkpoint: run a full build."""


@dataclass
class BuildReport:
    version: str | None
    indexed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    removed: int = 0
    resumed: int = 0  # crops taken from the shards of an earlier, killed run
    full: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def rate(self) -> float:
        return (self.indexed + len(self.failed)) / max(self.seconds, 1e-9)


def sha_tag(encoder: Encoder) -> str:
    """The name of a checkpoint's resumable build folder (``.building-<tag>``)."""
    return "".join(c for c in encoder.spec.checkpoint_sha256 if c.isalnum())[:24] or "model"


def resumable_writer(backend: IndexBackend, encoder: Encoder) -> ShardWriter:
    return ShardWriter(backend.builds_dir / f".building-{sha_tag(encoder)}")


# ---- full builds ----
def encode_gallery(encoder: Encoder, items: Items, writer: ShardWriter, *,
                   progress: Progress | None, options: ReadOptions, times: StageTimes,
                   shard_size: int = SHARD_SIZE) -> int:
    """Encode the crops no finished shard holds; returns how many were resumed."""
    done = writer.done_ids()
    todo = [(cid, path) for cid, path in items if cid not in done]
    resumed = len(items) - len(todo)
    if resumed:
        log.info("resuming a killed build: %d of %d crops already encoded", resumed, len(items))
    if progress:
        progress(resumed, len(items))
    encode_to_shards(encoder, todo, writer, shard_size=shard_size, options=options, times=times,
                     progress=progress, done=resumed, total=len(items))
    return resumed


def _kept_rows(shards: list[Shard], keep: set[int]) -> tuple[list[np.ndarray], int]:
    """Per shard, the rows to keep: crop id in ``keep``, first occurrence only."""
    picks, seen = [], set()
    for shard in shards:
        mask = np.array([cid in keep and cid not in seen for cid in shard.ids.tolist()], bool)
        seen.update(shard.ids[mask].tolist())
        picks.append(mask)
    return picks, int(sum(m.sum() for m in picks))


def build_from_shards(backend: IndexBackend, shards: list[Shard], keep: set[int],
                      encoder: Encoder, factory: str | None,
                      attributes: Attributes | None = None) -> tuple[str, np.ndarray]:
    """A complete version of the shards' crops in ``keep`` (not yet live): (name, ids)."""
    picks, total = _kept_rows(shards, keep)
    ids = np.concatenate([s.ids[m] for s, m in zip(shards, picks, strict=True)] or
                         [np.zeros(0, np.int64)])
    batches: Iterator[Rows] = (with_attributes(Rows(s.ids[m], s.vectors[m]), attributes)
                               for s, m in zip(shards, picks, strict=True))
    version = backend.build(batches, total=total, encoder=encoder.spec.to_dict(),
                            factory=factory)
    return version, ids


def resume_unfinished(backend: IndexBackend, encoder: Encoder) -> bool:
    """What a killed full build left: half-written versions and builds by another checkpoint
    are removed; True when a build by this encoder's checkpoint is left to resume. Nothing is
    touched while another build holds the lock."""
    folder = backend.builds_dir
    if not folder.exists():
        return False
    mine = folder / f".building-{sha_tag(encoder)}"
    others = [p for p in folder.glob(".building-*") if p != mine]
    if not others and not backend.unfinished() and not mine.exists():
        return False
    try:
        with backend.lock():
            for other in others:
                log.info("removing %s: a killed build by another checkpoint", other.name)
                shutil.rmtree(other)
            backend.prune()
    except BuildBusy:
        return False
    return mine.exists()


# ---- incremental ----
def chunk_bounds(total: int, first: int = FIRST_CHUNK, largest: int = ADD_CHUNK) -> list[
        tuple[int, int]]:
    """[lo, hi) of each published chunk: ``first`` crops, then doubling up to ``largest``."""
    bounds, lo, size = [], 0, max(1, first)
    while lo < total:
        bounds.append((lo, min(lo + size, total)))
        lo, size = lo + size, min(size * 2, max(largest, 1))
    return bounds


def add_in_chunks(backend: IndexBackend, encoder: Encoder, items: Items, *,
                  on_chunk: ChunkDone, progress: Progress | None = None,
                  options: ReadOptions | None = None,
                  attributes: Attributes | None = None) -> BuildReport:
    """Encode ``items`` and publish them chunk by chunk (``chunk_bounds``); with no live
    index, the first chunk becomes an exact base version. ``on_chunk`` records each."""
    started, times = time.perf_counter(), StageTimes()
    options = options or ReadOptions(workers=0 if len(items) < 256 else None)
    progress = LoggedProgress("indexing", progress)
    progress(0, len(items))
    indexed, failed = 0, []
    for lo, hi in chunk_bounds(len(items)):
        ids, vectors, bad = encode_items(encoder, items[lo:hi], options, times,
                                         progress=progress, done=lo, total=len(items))
        rows = with_attributes(Rows(ids, vectors), attributes)
        created = _publish_chunk(backend, encoder, rows) if len(ids) else None
        on_chunk(ids, bad, created)
        indexed, failed = indexed + len(ids), failed + bad
    return BuildReport(backend.current_version(), indexed, failed, time.perf_counter() - started,
                       stages=dict(times.seconds))


def _publish_chunk(backend: IndexBackend, encoder: Encoder, rows: Rows) -> str | None:
    """A generation of the live index; with none yet, an exact base version of these rows
    (returned: it was created)."""
    if backend.current_version() is not None:
        backend.add(rows)
        return None
    version = backend.build([rows], total=len(rows), encoder=encoder.spec.to_dict(),
                            factory="Flat")
    backend.publish(version)
    return version


def compact_live(backend: IndexBackend, factory: str | None = None,
                 attributes: Attributes | None = None) -> tuple[str, np.ndarray]:
    """Merge the live version's generations into a new base and publish it, keeping PREVIOUS
    (rollback still means 'the last build'); the spec is chosen again for the new size. The
    caller holds ``backend.lock()``. Returns (new version, its crop ids)."""
    live = backend.open()
    ids = live.live_ids()
    rows = with_attributes(Rows(ids, live.vectors(ids)), attributes)
    version = backend.build([rows], total=len(rows), encoder=live.manifest.encoder,
                            factory=factory or None)
    backend.publish(version, keep_previous=True)
    return version, ids


# ---- the questions asked before a job ----
def diff_ids(live_ids: np.ndarray, db_ids: np.ndarray,
             statuses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index vs gallery -> (crops to add, crop ids to remove, crops in the index that the
    gallery calls pending or failed). ``statuses`` (N,) are the crops' status names."""
    in_index = np.isin(db_ids, live_ids)
    want = (statuses == "pending") | (statuses == "indexed")
    to_add = db_ids[want & ~in_index]
    pending_in_index = db_ids[in_index & ((statuses == "pending") | (statuses == "failed"))]
    keep = db_ids[statuses != "deleted"]
    to_remove = live_ids[~np.isin(live_ids, keep)]
    return to_add[~np.isin(to_add, pending_in_index)], to_remove, pending_in_index
