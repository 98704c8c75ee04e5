"""Index jobs: crops in the database -> encoded vectors -> a published index version.

The functions the CLI, the API and the job worker call:

- ``build_full``: encode every crop into resumable shards, build a new version beside the live
  one, swap it in atomically (the old one stays as PREVIOUS for ``rollback``).
- ``sync``: the incremental default of ``tbps index``: adds pending crops, drops deleted ones;
  falls back to ``build_full`` when there is no index or it was built by another checkpoint.
- ``add_crops`` / ``remove_crops``: make given crops searchable / gone at once, no rebuild.
- ``rollback``: make the previous version live again.
- ``check``: verify that the database and the index agree, and repair what can be repaired.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy.orm import Session

from indexer import dbsync
from indexer.build import (
    DEFAULT_FACTORY,
    IndexSpec,
    build_first_stage,
    build_manifest_spec,
    choose_spec,
    nlist_of,
    normalise_factory,
)
from indexer.pipeline import (
    LoggedProgress,
    Progress,
    ReadOptions,
    StageTimes,
    encode_items,
    encode_to_shards,
)
from indexer.store import IndexStore, new_version_name, split_pointer
from indexer.writer import ShardWriter, merge_shards
from models.encoder import Encoder

log = logging.getLogger(__name__)

__all__ = ["BuildReport", "CheckReport", "StaleIndex", "BuildBusy", "build_full", "sync",
           "add_crops", "first_build", "remove_crops", "rollback", "check", "compact",
           "DEFAULT_FACTORY"]

SHARD_SIZE = 4096
FIRST_CHUNK = 32  # crops in the first published generation: searchable within seconds
ADD_CHUNK = 256  # most crops per published generation when adding many (chunks double up to it)
COMPACT_GENERATIONS = 256  # more generations than this: merge them into a new base


class StaleIndex(RuntimeError):
    """The live index was built by another checkpoint: run a full build."""


class BuildBusy(RuntimeError):
    """Another full build holds the build lock."""


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


@dataclass
class CheckReport:
    version: str | None
    index_count: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- full builds ----
_BUILD_THREAD_LOCK = threading.Lock()


@contextmanager
def build_lock(store: IndexStore) -> Iterator[None]:
    """One full build at a time per index root (non-blocking: raises ``BuildBusy``).

    A POSIX record lock (``lockf``), not ``flock``: it is not inherited by the reader's forked
    worker processes, so a killed build releases it at once even while they wind down.
    """
    store.root.mkdir(parents=True, exist_ok=True)
    if not _BUILD_THREAD_LOCK.acquire(blocking=False):
        raise BuildBusy("another index build is running in this process")
    try:
        with (store.root / "BUILD_LOCK").open("a") as fh:
            try:
                fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise BuildBusy(f"another index build is running on {store.root}") from None
            try:
                yield
            finally:
                fcntl.lockf(fh.fileno(), fcntl.LOCK_UN)
    finally:
        _BUILD_THREAD_LOCK.release()


def build_full(session: Session, encoder: Encoder, crops_dir: Path, index_root: Path, *,
               factory: str | None = None, progress: Progress | None = None,
               options: ReadOptions | None = None, shard_size: int = SHARD_SIZE) -> BuildReport:
    """Encode every indexable crop, write a new version beside the live one and swap it in.

    Resumable: shards finished by a killed run with the same checkpoint are reused. The
    live index keeps serving until the swap; ``factory`` None chooses the spec by size.
    """
    started, times = time.perf_counter(), StageTimes()
    store = IndexStore(index_root)
    with build_lock(store):
        writer = ShardWriter(store.versions / f".building-{_sha_tag(encoder)}")
        resumed = _encode_gallery(session, encoder, crops_dir, writer, progress,
                                  options or ReadOptions(), times, shard_size)
        keep = {cid for cid, _ in dbsync.indexable_items(session, crops_dir)}  # drops deletes
        shards = writer.read_shards()
        mark = time.perf_counter()
        version, ids = _write_version(store, shards, keep, encoder, factory)
        times.add("index", mark)
        failed = [f for shard in shards for f in shard.failed if f[0] in keep]
        _go_live(session, store, version, ids, failed)
        shutil.rmtree(writer.folder)
        store.prune()
    caught_up = sync(session, encoder, crops_dir, index_root, options=options)
    report = BuildReport(store.current_version(), len(ids) + caught_up.indexed,
                         failed + caught_up.failed, time.perf_counter() - started,
                         caught_up.removed, resumed, True, dict(times.seconds))
    log.info("published index %s: %d crops, %d failed, %d resumed, %.1fs", report.version,
             report.indexed, len(report.failed), resumed, report.seconds)
    return report


def _sha_tag(encoder: Encoder) -> str:
    return "".join(c for c in encoder.spec.checkpoint_sha256 if c.isalnum())[:24] or "model"


def _encode_gallery(session: Session, encoder: Encoder, crops_dir: Path, writer: ShardWriter,
                    progress: Progress | None, options: ReadOptions, times: StageTimes,
                    shard_size: int) -> int:
    """Encode the crops no finished shard holds; returns how many were resumed."""
    items = dbsync.indexable_items(session, crops_dir)
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


def _write_version(store: IndexStore, shards: list, keep: set[int], encoder: Encoder,
                   factory: str | None) -> tuple[str, np.ndarray]:
    """Merge shards into a complete version folder (not yet live); returns (name, ids)."""
    version = new_version_name()
    staging = store.staging_dir(version)
    ids, full = merge_shards(shards, keep, staging, encoder.spec.dim)
    manifest = _finish_version(staging, full, choose_spec(len(ids), factory),
                               encoder.spec.to_dict())
    store.commit_staging(staging, version, manifest)
    return version, ids


def _finish_version(staging: Path, full: np.ndarray, spec: IndexSpec,
                    encoder_spec: dict[str, Any]) -> dict[str, Any]:
    """Build the first stage (two-stage specs) into ``staging``; returns the manifest."""
    first = build_manifest_spec(spec, encoder_spec.get("parts", ()), full.shape[1])
    if first is not None:
        index = build_first_stage(full, spec, first["start"], first["stop"])
        first["nlist"] = nlist_of(index)
        faiss.write_index(index, str(staging / "first_stage.faiss"))
    return {"checkpoint_sha256": encoder_spec["checkpoint_sha256"], "factory": spec.label,
            "metric": "inner_product", "encoder": encoder_spec, "first_stage": first,
            "count": int(len(full)), "dim": int(full.shape[1]), "vectors_dtype": "float16",
            "created_at": datetime.now(UTC).isoformat()}


def _go_live(session: Session, store: IndexStore, version: str, ids: np.ndarray,
             failed: list[tuple[int, str]], keep_previous: bool = False) -> None:
    """Publish, then record it in the database. A kill between the two leaves crops
    'pending' that are in fact indexed; ``sync``/``check`` set them right."""
    store.publish(version, keep_previous=keep_previous)
    dbsync.record_live(session, version=version, path=store.versions / version,
                       manifest=store.manifest(version), count=len(ids))
    dbsync.mark_indexed(session, ids.tolist())
    dbsync.mark_failed(session, failed)
    session.commit()


# ---- incremental ----
def add_crops(session: Session, encoder: Encoder, crops_dir: Path, index_root: Path,
              crop_ids: Iterable[int], *, progress: Progress | None = None,
              options: ReadOptions | None = None) -> BuildReport:
    """Encode these crops and publish them as new generations of the live index (no rebuild).

    Chunks start at ``FIRST_CHUNK`` crops and double up to ``ADD_CHUNK``, so that the first
    ones are searchable within seconds of the start. Crops already indexed are re-encoded and
    replaced; deleted crops are skipped. With no index yet, the whole gallery is published
    this way (``first_build``). Raises ``StaleIndex`` when the live index was built by another
    checkpoint (build a full one).
    """
    store = IndexStore(index_root)
    current = store.current_version()
    if current is None:
        return first_build(session, encoder, crops_dir, index_root, progress=progress,
                           options=options)
    _require_same_model(store, current, encoder)
    items = dbsync.indexable_items(session, crops_dir, crop_ids)
    return _add_in_chunks(session, encoder, store, items, progress, options)


def first_build(session: Session, encoder: Encoder, crops_dir: Path, index_root: Path, *,
                progress: Progress | None = None,
                options: ReadOptions | None = None) -> BuildReport:
    """The first index of a gallery, searchable from its first chunk on: a base version of the
    first crops, then a generation per chunk. A killed run leaves the chunks published so far
    live; ``sync`` adds the rest. Galleries too large for exact search are compacted into the
    spec chosen for their size at the end."""
    store, report = IndexStore(index_root), None
    with build_lock(store):
        if store.current_version() is None:  # else another process built it meanwhile
            items = dbsync.indexable_items(session, crops_dir)
            report = _add_in_chunks(session, encoder, store, items, progress, options)
    if report is None:
        return sync(session, encoder, crops_dir, index_root, progress=progress, options=options)
    report.full = True
    if report.indexed and not choose_spec(report.indexed).exact:
        report.version = compact(session, index_root)
    return report


def chunk_bounds(total: int, first: int = FIRST_CHUNK, largest: int = ADD_CHUNK) -> list[
        tuple[int, int]]:
    """[lo, hi) of each published chunk: ``first`` crops, then doubling up to ``largest``."""
    bounds, lo, size = [], 0, max(1, first)
    while lo < total:
        bounds.append((lo, min(lo + size, total)))
        lo, size = lo + size, min(size * 2, max(largest, 1))
    return bounds


def _add_in_chunks(session: Session, encoder: Encoder, store: IndexStore,
                   items: list[tuple[int, Path]], progress: Progress | None,
                   options: ReadOptions | None) -> BuildReport:
    started, times = time.perf_counter(), StageTimes()
    options = options or ReadOptions(workers=0 if len(items) < 256 else None)
    progress = LoggedProgress("indexing", progress)
    progress(0, len(items))
    indexed, failed = 0, []
    for lo, hi in chunk_bounds(len(items)):
        ids, vectors, bad = encode_items(encoder, items[lo:hi], options, times,
                                         progress=progress, done=lo, total=len(items))
        if len(ids):
            _publish_chunk(session, store, encoder, ids, vectors)
        dbsync.mark_indexed(session, ids.tolist())
        dbsync.mark_failed(session, bad)
        session.commit()
        indexed, failed = indexed + len(ids), failed + bad
    _update_live_count(session, store)
    return BuildReport(store.current_version(), indexed, failed, time.perf_counter() - started,
                       stages=dict(times.seconds))


def _publish_chunk(session: Session, store: IndexStore, encoder: Encoder, ids: np.ndarray,
                   vectors: np.ndarray) -> None:
    """A generation of the live index; with none yet, an exact base version of these crops."""
    if store.current_version() is not None:
        store.add_delta(ids, vectors, np.zeros(0, np.int64))
        return
    from indexer.writer import write_arrays

    version = new_version_name()
    staging = store.staging_dir(version)
    write_arrays(staging, vectors, ids)
    full = np.load(staging / "vectors.npy", mmap_mode="r")
    manifest = _finish_version(staging, full, choose_spec(len(ids), "Flat"),
                               encoder.spec.to_dict())
    store.commit_staging(staging, version, manifest)
    _go_live(session, store, version, ids, [])


def remove_crops(index_root: Path, crop_ids: Iterable[int]) -> str | None:
    """Hide these crops from every search at once (a tombstone generation); returns the new
    live pointer, or None when there is no index. The caller marks them deleted in the DB."""
    ids = np.unique(np.asarray(list(crop_ids), dtype=np.int64))
    store = IndexStore(index_root)
    if store.current_version() is None or not len(ids):
        return store.current_version()
    dim = int(store.manifest(store.current_version())["dim"])
    return store.add_delta(np.zeros(0, np.int64), np.zeros((0, dim), np.float16), ids)


def sync(session: Session, encoder: Encoder, crops_dir: Path, index_root: Path, *,
         factory: str | None = None, progress: Progress | None = None,
         options: ReadOptions | None = None) -> BuildReport:
    """Bring the index up to date with the database without a rebuild when possible:
    add pending crops (and indexed ones missing from the index), drop deleted ones."""
    store = IndexStore(index_root)
    if resume_unfinished(store, encoder):
        log.info("resuming the unfinished full build of a killed run")
        return build_full(session, encoder, crops_dir, index_root, factory=factory,
                          progress=progress, options=options)
    current = store.current_version()
    if current is None or _needs_full(store.manifest(current), encoder, factory):
        return build_full(session, encoder, crops_dir, index_root, factory=factory,
                          progress=progress, options=options)
    started = time.perf_counter()
    live = store.load(current, use_gpu=False)
    to_add, to_remove, in_index_pending = _diff(session, live.live_ids())
    dbsync.mark_indexed(session, in_index_pending.tolist())
    session.commit()
    if len(to_remove):
        remove_crops(index_root, to_remove)
    report = add_crops(session, encoder, crops_dir, index_root, to_add.tolist(),
                       progress=progress, options=options)
    report.removed, report.seconds = len(to_remove), time.perf_counter() - started
    if split_pointer(store.current_version() or "")[1] > COMPACT_GENERATIONS:
        compact(session, index_root)
    return report


def resume_unfinished(store: IndexStore, encoder: Encoder) -> bool:
    """What a killed full build left: half-written versions and builds by another checkpoint
    are removed; True when a build by this encoder's checkpoint is left to resume. Nothing is
    touched while another build holds the lock."""
    if not store.versions.exists():
        return False
    mine = store.versions / f".building-{_sha_tag(encoder)}"
    others = [p for p in store.versions.glob(".building-*") if p != mine]
    if not others and not any(store.versions.glob(".staging-*")) and not mine.exists():
        return False
    try:
        with build_lock(store):
            for folder in others:
                log.info("removing %s: a killed build by another checkpoint", folder.name)
                shutil.rmtree(folder)
            store.prune()
    except BuildBusy:
        return False
    return mine.exists()


def _needs_full(manifest: dict, encoder: Encoder, factory: str | None) -> bool:
    if manifest.get("checkpoint_sha256") != encoder.spec.checkpoint_sha256:
        log.info("the live index was built by another checkpoint: full build")
        return True
    return bool(factory) and normalise_factory(factory) != manifest.get("factory")


def _require_same_model(store: IndexStore, pointer: str, encoder: Encoder) -> None:
    built_with = store.manifest(pointer).get("checkpoint_sha256")
    if built_with != encoder.spec.checkpoint_sha256:
        raise StaleIndex(f"the live index {pointer} was built by checkpoint {built_with}; "
                         "run `tbps index --full` with the current one")


def _diff(session: Session, live_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (crops to add, crop ids to remove, crops in the index that the DB calls pending)."""
    db_ids, statuses = dbsync.crop_statuses(session)
    in_index = np.isin(db_ids, live_ids)
    want = (statuses == "pending") | (statuses == "indexed")
    to_add = db_ids[want & ~in_index]
    pending_in_index = db_ids[in_index & ((statuses == "pending") | (statuses == "failed"))]
    keep = db_ids[statuses != "deleted"]
    to_remove = live_ids[~np.isin(live_ids, keep)]
    return to_add[~np.isin(to_add, pending_in_index)], to_remove, pending_in_index


def _update_live_count(session: Session, store: IndexStore) -> None:
    pointer = store.current_version()
    if pointer is None:
        return
    base, _ = split_pointer(pointer)
    live = store.load(pointer, use_gpu=False)
    dbsync.record_live(session, version=base, path=store.versions / base,
                       manifest=live.manifest, count=live.count)
    session.commit()


def compact(session: Session, index_root: Path, *, factory: str | None = None) -> str | None:
    """Merge the live version's generations into a new base (no re-encoding); the spec is
    chosen again for the new size. PREVIOUS is kept, so rollback still means 'the last build'."""
    store = IndexStore(index_root)
    with build_lock(store):
        live = store.load(use_gpu=False)
        if live is None:
            return None
        ids = live.live_ids()
        version = new_version_name()
        staging = store.staging_dir(version)
        from indexer.writer import write_arrays

        write_arrays(staging, live.vectors(ids), ids)
        full = np.load(staging / "vectors.npy", mmap_mode="r")
        spec = choose_spec(len(ids), factory or None)
        manifest = _finish_version(staging, full, spec, live.manifest["encoder"])
        store.commit_staging(staging, version, manifest)
        _go_live(session, store, version, ids, [], keep_previous=True)
        store.prune()
    return version


# ---- rollback and check ----
def rollback(session: Session, index_root: Path) -> str:
    """Make the previous version live again; crops deleted since vanish, crops it lacks go back
    to 'pending' (``tbps index`` adds them when the current checkpoint matches it)."""
    store = IndexStore(index_root)
    pointer = store.rollback()
    live = store.load(pointer, use_gpu=False)
    to_add, to_remove, in_index_pending = _diff(session, live.live_ids())
    if len(to_remove):
        pointer = remove_crops(index_root, to_remove) or pointer
    dbsync.mark_pending(session, to_add.tolist())
    dbsync.mark_indexed(session, in_index_pending.tolist())
    base, _ = split_pointer(pointer)
    dbsync.record_live(session, version=base, path=store.versions / base,
                       manifest=live.manifest, count=live.count - len(to_remove))
    session.commit()
    return pointer


def check(session: Session, index_root: Path, *, encoder: Encoder | None = None,
          crops_dir: Path | None = None, repair: bool = True) -> CheckReport:
    """Verify that the database and the live index agree; with ``repair``, fix what can be
    fixed (re-encoding needs ``encoder`` and ``crops_dir``)."""
    from indexer.check import run_check

    return run_check(session, IndexStore(index_root), encoder=encoder, crops_dir=crops_dir,
                     repair=repair)
