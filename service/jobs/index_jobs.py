"""Index jobs: crops in the database -> the indexer -> a published index version, recorded.

The functions the CLI, the API and the job worker call. The service owns the tables: it picks
the crops (id, path), hands them to the indexer (``indexer.jobs``) and records the outcome.

- ``build_full``: encode every crop into resumable shards, build a new version beside the live
  one, swap it in atomically (the old one stays as PREVIOUS for ``rollback``).
- ``sync``: the incremental default of ``tbps index``: adds pending crops, drops deleted ones;
  a full build when there is no index or it was built by another checkpoint.
- ``add_crops`` / ``remove_crops``: make given crops searchable / gone at once, no rebuild.

The first three are goals of one loop (``_run``): the state of the catalog and the live index
is read (``read_state``), ``service.jobs.index_plan.plan`` turns it into steps (full / first /
mark / remove / add / compact), and the loop runs them; no job calls another.
- ``rollback``: make the previous version live again.

``service.jobs.index_check.check`` verifies that the database and the index agree, and repairs.

``index`` is an ``IndexBackend``, or a folder (a FAISS index there).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from indexer.backends import CorruptIndex, IndexBackend, NoIndex, create_backend
from indexer.backends.base import BuildBusy, split_pointer
from indexer.jobs import (
    Attributes,
    BuildReport,
    StaleIndex,
    add_in_chunks,
    build_from_shards,
    compact_live,
    diff_ids,
    encode_gallery,
    resumable_writer,
    resume_unfinished,
)
from indexer.limits import ImageLimits
from indexer.pipeline import Progress, ReadOptions, StageTimes
from indexer.spec import DEFAULT_FACTORY
from models.encoder import Encoder
from service.jobs import index_records as records
from service.jobs.index_plan import Goal, IndexState, Step, plan

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FACTORY", "BuildBusy", "BuildReport", "NoIndex", "StaleIndex", "add_crops",
           "as_backend", "build_full", "build_full_on_ray", "compact", "gallery_diff",
           "read_state", "remove_crops", "rollback", "sync"]

Index = IndexBackend | Path | str


def attributes_for(session: Session, backend: IndexBackend) -> Attributes | None:
    """Each crop's filter attributes from the crops table, for a backend that stores them to
    filter inside its engine (Milvus); None for one that filters by the catalog's ids."""
    return records.crop_attributes(session) if backend.filters_in_engine else None


def as_backend(index: Index) -> IndexBackend:
    """A backend as given, or the FAISS index in a folder (CPU: jobs do not search)."""
    if isinstance(index, (Path, str)):
        return create_backend("faiss", root=Path(index), use_gpu=False)
    return index


# ---- the job loop: read the state, plan, run the steps ----
@dataclass(frozen=True)
class _Job:
    """What every step of one job works with."""

    session: Session
    encoder: Encoder
    crops_dir: Path
    backend: IndexBackend
    progress: Progress | None = None
    options: ReadOptions | None = None
    factory: str | None = None
    shard_size: int | None = None


def build_full(session: Session, encoder: Encoder, crops_dir: Path, index: Index, *,
               factory: str | None = None, progress: Progress | None = None,
               options: ReadOptions | None = None, shard_size: int | None = None) -> BuildReport:
    """Encode every indexable crop, write a new version beside the live one and swap it in,
    then add the crops uploaded meanwhile. Resumable: shards finished by a killed run with
    the same checkpoint are reused. ``factory`` None chooses the spec by size."""
    return _run(_Job(session, encoder, Path(crops_dir), as_backend(index), progress, options,
                     factory, shard_size), "full")


def sync(session: Session, encoder: Encoder, crops_dir: Path, index: Index, *,
         factory: str | None = None, progress: Progress | None = None,
         options: ReadOptions | None = None) -> BuildReport:
    """Bring the index up to date with the database without a rebuild when possible: add
    pending crops (and indexed ones missing from the index), drop deleted ones. A full build
    when there is no index, it was built by another checkpoint or spec, a killed full build
    is left to resume, or the live version is corrupt or gone."""
    return _run(_Job(session, encoder, Path(crops_dir), as_backend(index), progress, options,
                     factory), "sync")


def add_crops(session: Session, encoder: Encoder, crops_dir: Path, index: Index,
              crop_ids: Iterable[int], *, progress: Progress | None = None,
              options: ReadOptions | None = None) -> BuildReport:
    """Encode these crops and publish them as new generations of the live index (no rebuild).

    Chunks start at ``FIRST_CHUNK`` crops and double up to ``ADD_CHUNK``, so that the first
    ones are searchable within seconds of the start. Crops already indexed are re-encoded and
    replaced; deleted crops are skipped. With no index yet, the whole gallery is published
    this way (a first build, searchable from its first chunk on). Raises ``StaleIndex`` when
    the live index was built by another checkpoint. A live index that is corrupt or whose
    folder is gone is rebuilt in full, these crops with the rest.
    """
    return _run(_Job(session, encoder, Path(crops_dir), as_backend(index), progress, options),
                "add", [int(i) for i in crop_ids])


def _run(job: _Job, goal: Goal, crop_ids: list[int] | None = None) -> BuildReport:
    """Plan from the state and run the steps, one at a time; after a full build (crops added
    while it ran) or a first build that found an index (another process built it), plan
    again from the new state."""
    started, total, rebuilt = time.perf_counter(), BuildReport(None), False
    steps = plan(read_state(job, goal, crop_ids), goal)
    while steps:
        step = steps.pop(0)
        done = STEPS[step.action](job, step)
        if done is None:  # the first index was built meanwhile: catch up with it
            goal, steps = "sync", plan(read_state(job, "sync"), "sync")
            continue
        _merge(total, done)
        if step.action == "full":  # no progress: the job's own is done at the swap
            goal, rebuilt, job = "sync", True, replace(job, progress=None, factory=None)
            steps = plan(read_state(job, "sync"), "sync", rebuilt=True)
    total.version, total.seconds = job.backend.current_version(), time.perf_counter() - started
    if rebuilt:
        log.info("published index %s: %d crops, %d failed, %d resumed, %.1fs", total.version,
                 total.indexed, len(total.failed), total.resumed, total.seconds)
    return total


def _merge(total: BuildReport, part: BuildReport) -> None:
    total.indexed += part.indexed
    total.failed += part.failed
    total.removed += part.removed
    total.resumed += part.resumed
    total.full = total.full or part.full
    for stage, seconds in part.stages.items():
        total.stages[stage] = total.stages.get(stage, 0.0) + seconds


def read_state(job: _Job, goal: Goal, crop_ids: list[int] | None = None) -> IndexState:
    """The live index against the catalog: what ``plan`` needs for ``goal`` (a sync also
    cleans what a killed full build left, ``resume_unfinished``)."""
    backend, session = job.backend, job.session
    if goal == "full":
        return IndexState()
    resumable = goal == "sync" and resume_unfinished(backend, job.encoder)
    live = backend.current_version()
    if live is None:
        gallery = len(records.indexable_items(session, job.crops_dir)) if goal == "add" else 0
        return IndexState(resumable=resumable, gallery=gallery)
    refused = unusable(backend, live)
    if refused is not None:
        return IndexState(live, refused, resumable)
    manifest = backend.manifest(live)
    state = IndexState(live, None, resumable,
                       None if manifest.built_by(job.encoder) else manifest.checkpoint_sha256,
                       not manifest.same_factory(job.factory), split_pointer(live)[1])
    if goal == "add":
        return replace(state, to_add=tuple(crop_ids or ()))
    if resumable or state.built_by_other or state.other_factory:
        return state  # a full build: no diff needed
    to_add, to_remove, settled = gallery_diff(session, backend.open(live).live_ids())
    return replace(state, to_add=tuple(to_add.tolist()), to_remove=tuple(to_remove.tolist()),
                   settled=tuple(settled.tolist()))


# ---- the steps ----
def _full(job: _Job, step: Step) -> BuildReport:
    """A new version of every indexable crop beside the live one, swapped in. The live index
    keeps serving until the swap."""
    started, times, backend, session = time.perf_counter(), StageTimes(), job.backend, job.session
    with backend.lock():
        writer = resumable_writer(backend, job.encoder)
        items = records.indexable_items(session, job.crops_dir)
        resumed = encode_gallery(job.encoder, items, writer, progress=job.progress, times=times,
                                 options=job.options or ReadOptions(),
                                 **({"shard_size": job.shard_size} if job.shard_size else {}))
        keep = {cid for cid, _ in records.indexable_items(session, job.crops_dir)}  # deletes
        shards = writer.read_shards()
        mark = time.perf_counter()
        version, ids = build_from_shards(backend, shards, keep, job.encoder, job.factory,
                                         attributes_for(session, backend))
        times.add("index", mark)
        failed = [f for shard in shards for f in shard.failed if f[0] in keep]
        _go_live(session, backend, version, ids, failed)
        shutil.rmtree(writer.folder)
        backend.prune()
    return BuildReport(version, len(ids), failed, time.perf_counter() - started,
                       resumed=resumed, full=True, stages=dict(times.seconds))


def _first(job: _Job, step: Step) -> BuildReport | None:
    """The first index of a gallery, searchable from its first chunk on: a base version of the
    first crops, then a generation per chunk. A killed run leaves the chunks published so far
    live; ``sync`` adds the rest. None: another process built an index meanwhile."""
    with job.backend.lock():
        if job.backend.current_version() is not None:
            return None
        items = records.indexable_items(job.session, job.crops_dir)
        report = _add_in_chunks(job.session, job.encoder, job.backend, items, job.progress,
                                job.options)
    report.full = True
    return report


def _mark(job: _Job, step: Step) -> BuildReport:
    """Crops the index holds that the catalog calls pending or failed are indexed."""
    records.mark_indexed(job.session, list(step.ids))
    job.session.commit()
    return BuildReport(None)


def _remove(job: _Job, step: Step) -> BuildReport:
    job.backend.remove(np.asarray(step.ids, dtype=np.int64))
    return BuildReport(None, removed=len(step.ids))


def _add(job: _Job, step: Step) -> BuildReport:
    items = records.indexable_items(job.session, job.crops_dir, step.ids)
    return _add_in_chunks(job.session, job.encoder, job.backend, items, job.progress,
                          job.options)


def _compact(job: _Job, step: Step) -> BuildReport:
    return BuildReport(compact(job.session, job.backend))


STEPS: dict[str, Callable[[_Job, Step], BuildReport | None]] = {
    "full": _full, "first": _first, "mark": _mark, "remove": _remove, "add": _add,
    "compact": _compact}


def _record_live(session: Session, backend: IndexBackend, count: int | None = None) -> None:
    """The database row of the live version (its base), with the live count."""
    pointer = backend.current_version()
    if pointer is None:
        return
    base, _ = split_pointer(pointer)
    live = backend.open(pointer)
    records.record_live(session, version=base, path=backend.builds_dir / base,
                        manifest=live.manifest, count=live.count if count is None else count)


def _go_live(session: Session, backend: IndexBackend, version: str, ids: np.ndarray,
             failed: list[tuple[int, str]], keep_previous: bool = False) -> None:
    """Publish, then record it in the database. A kill between the two leaves crops
    'pending' that are in fact indexed; ``sync``/``check`` set them right."""
    backend.publish(version, keep_previous=keep_previous)
    _record_created(session, backend, version, len(ids))
    records.mark_indexed(session, ids.tolist())
    records.mark_failed(session, failed)
    session.commit()


def _record_created(session: Session, backend: IndexBackend, version: str, count: int) -> None:
    records.record_live(session, version=version, path=backend.builds_dir / version,
                        manifest=backend.manifest(version), count=count)


def unusable(backend: IndexBackend, pointer: str) -> str | None:
    """Why the version ``pointer`` cannot be added to (corrupt, or its folder is gone), or
    None when it can."""
    try:
        backend.open(pointer)
    except CorruptIndex as exc:
        return str(exc)
    return None


def _add_in_chunks(session: Session, encoder: Encoder, backend: IndexBackend,
                   items: list[tuple[int, Path]], progress: Progress | None,
                   options: ReadOptions | None) -> BuildReport:
    def on_chunk(ids: np.ndarray, failed: list[tuple[int, str]], created: str | None) -> None:
        if created is not None:
            _record_created(session, backend, created, len(ids))
        records.mark_indexed(session, ids.tolist())
        records.mark_failed(session, failed)
        session.commit()

    report = add_in_chunks(backend, encoder, items, on_chunk=on_chunk, progress=progress,
                           options=options, attributes=attributes_for(session, backend))
    _record_live(session, backend)
    session.commit()
    return report


def remove_crops(index: Index, crop_ids: Iterable[int]) -> str | None:
    """Hide these crops from every search at once (a tombstone generation); returns the new
    live pointer, or None when there is no index. The caller marks them deleted in the DB."""
    return as_backend(index).remove(np.asarray(list(crop_ids), dtype=np.int64))


def gallery_diff(session: Session,
                 live_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (crops to add, crop ids to remove, crops in the index that the DB calls pending)."""
    return diff_ids(live_ids, *records.crop_statuses(session))


def compact(session: Session, index: Index, *, factory: str | None = None) -> str | None:
    """Merge the live version's generations into a new base (no re-encoding); the spec is
    chosen again for the new size. PREVIOUS is kept, so rollback still means 'the last build'."""
    backend = as_backend(index)
    with backend.lock():
        if backend.current_version() is None:
            return None
        version, ids = compact_live(backend, factory, attributes_for(session, backend))
        _record_created(session, backend, version, len(ids))
        records.mark_indexed(session, ids.tolist())
        session.commit()
        backend.prune()
    return version


# ---- on Ray ----
def build_full_on_ray(session: Session, encoder: Encoder, encoder_options: dict[str, Any],
                      crops_dir: Path, index: Index, *, address: str | None = None,
                      factory: str | None = None, progress: Progress | None = None,
                      batch_size: int = 64, actors: int | None = None,
                      limits: ImageLimits = ImageLimits()) -> BuildReport:
    """``build_full`` on Ray Data (``indexer.ray_index``; ``address`` None: a local Ray): the
    same crops, each with its filter attributes, encoded by actors that load the encoder from
    ``encoder_options``; published, then recorded as ``build_full`` records its build."""
    from indexer.ray_index import CropItem, build_with_ray

    backend = as_backend(index)
    pairs = records.indexable_items(session, crops_dir)
    ids = np.asarray([cid for cid, _ in pairs], np.int64)
    columns = records.crop_attributes(session)(ids)
    items = [CropItem(int(i), path, {name: values[row] for name, values in columns.items()})
             for row, (i, path) in enumerate(pairs)]
    ray_report = build_with_ray(backend, items, encoder_options, encoder.spec.to_dict(),
                                address=address, factory=factory, batch_size=batch_size,
                                actors=actors, progress=progress, limits=limits)
    bad = {cid for cid, _ in ray_report.failed}
    _record_created(session, backend, ray_report.version, ray_report.indexed)
    records.mark_indexed(session, [int(i) for i in ids if int(i) not in bad])
    records.mark_failed(session, ray_report.failed)
    session.commit()
    with backend.lock():
        backend.prune()
    return BuildReport(backend.current_version(), ray_report.indexed, ray_report.failed,
                       ray_report.seconds, full=True, stages={"ray": ray_report.seconds})


# ---- rollback ----
def rollback(session: Session, index: Index) -> str:
    """Make the previous version live again; crops deleted since vanish, crops it lacks go back
    to 'pending' (``tbps index`` adds them when the current checkpoint matches it)."""
    backend = as_backend(index)
    pointer = backend.rollback()
    live = backend.open(pointer)
    to_add, to_remove, in_index_pending = gallery_diff(session, live.live_ids())
    if len(to_remove):
        pointer = backend.remove(to_remove) or pointer
    records.mark_pending(session, to_add.tolist())
    records.mark_indexed(session, in_index_pending.tolist())
    base, _ = split_pointer(pointer)
    records.record_live(session, version=base, path=backend.builds_dir / base,
                        manifest=live.manifest, count=live.count - len(to_remove))
    session.commit()
    return pointer

