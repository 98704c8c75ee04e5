"""Index jobs: crops in the database -> the indexer -> a published index version, recorded.

The functions the CLI, the API and the job worker call. The service owns the tables: it picks
the crops (id, path), hands them to the indexer (``indexer.jobs``) and records the outcome.

- ``build_full``: encode every crop into resumable shards, build a new version beside the live
  one, swap it in atomically (the old one stays as PREVIOUS for ``rollback``).
- ``sync``: the incremental default of ``tbps index``: adds pending crops, drops deleted ones;
  falls back to ``build_full`` when there is no index or it was built by another checkpoint.
- ``add_crops`` / ``remove_crops``: make given crops searchable / gone at once, no rebuild.
- ``rollback``: make the previous version live again.

``service.index_check.check`` verifies that the database and the index agree, and repairs.

``index`` is an ``IndexBackend``, or a folder (a FAISS index there).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from indexer.backends import CorruptIndex, IndexBackend, NoIndex, create_backend
from indexer.backends.base import BuildBusy, split_pointer
from indexer.jobs import (
    COMPACT_GENERATIONS,
    Attributes,
    BuildReport,
    StaleIndex,
    add_in_chunks,
    build_from_shards,
    compact_live,
    diff_ids,
    encode_gallery,
    needs_full,
    require_same_model,
    resumable_writer,
    resume_unfinished,
)
from indexer.limits import ImageLimits
from indexer.pipeline import Progress, ReadOptions, StageTimes
from indexer.spec import DEFAULT_FACTORY, choose_spec
from models.encoder import Encoder
from service import index_records as records

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FACTORY", "BuildBusy", "BuildReport", "NoIndex", "StaleIndex", "add_crops",
           "as_backend", "build_full", "build_full_on_ray", "compact", "first_build",
           "gallery_diff", "remove_crops", "rollback", "sync"]

Index = IndexBackend | Path | str


def attributes_for(session: Session, backend: IndexBackend) -> Attributes | None:
    """Each crop's camera and time from the crops table, for a backend that stores them to
    filter inside its engine (Milvus); None for one that filters by the catalog's ids."""
    return records.crop_attributes(session) if backend.filters_in_engine else None


def as_backend(index: Index) -> IndexBackend:
    """A backend as given, or the FAISS index in a folder (CPU: jobs do not search)."""
    if isinstance(index, (Path, str)):
        return create_backend("faiss", root=Path(index), use_gpu=False)
    return index


# ---- full builds ----
def build_full(session: Session, encoder: Encoder, crops_dir: Path, index: Index, *,
               factory: str | None = None, progress: Progress | None = None,
               options: ReadOptions | None = None, shard_size: int | None = None) -> BuildReport:
    """Encode every indexable crop, write a new version beside the live one and swap it in.

    Resumable: shards finished by a killed run with the same checkpoint are reused. The
    live index keeps serving until the swap; ``factory`` None chooses the spec by size.
    """
    started, times, backend = time.perf_counter(), StageTimes(), as_backend(index)
    with backend.lock():
        writer = resumable_writer(backend, encoder)
        items = records.indexable_items(session, crops_dir)
        resumed = encode_gallery(encoder, items, writer, progress=progress, times=times,
                                 options=options or ReadOptions(),
                                 **({"shard_size": shard_size} if shard_size else {}))
        keep = {cid for cid, _ in records.indexable_items(session, crops_dir)}  # drops deletes
        shards = writer.read_shards()
        mark = time.perf_counter()
        version, ids = build_from_shards(backend, shards, keep, encoder, factory,
                                         attributes_for(session, backend))
        times.add("index", mark)
        failed = [f for shard in shards for f in shard.failed if f[0] in keep]
        _go_live(session, backend, version, ids, failed)
        shutil.rmtree(writer.folder)
        backend.prune()
    caught_up = sync(session, encoder, crops_dir, backend, options=options, rebuild=False)
    report = BuildReport(backend.current_version(), len(ids) + caught_up.indexed,
                         failed + caught_up.failed, time.perf_counter() - started,
                         caught_up.removed, resumed, True, dict(times.seconds))
    log.info("published index %s: %d crops, %d failed, %d resumed, %.1fs", report.version,
             report.indexed, len(report.failed), resumed, report.seconds)
    return report


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


# ---- incremental ----
def unusable(backend: IndexBackend, pointer: str) -> str | None:
    """Why the version ``pointer`` cannot be added to (corrupt, or its folder is gone), or
    None when it can."""
    try:
        backend.open(pointer)
    except CorruptIndex as exc:
        return str(exc)
    return None


def add_crops(session: Session, encoder: Encoder, crops_dir: Path, index: Index,
              crop_ids: Iterable[int], *, progress: Progress | None = None,
              options: ReadOptions | None = None, rebuild: bool = True) -> BuildReport:
    """Encode these crops and publish them as new generations of the live index (no rebuild).

    Chunks start at ``FIRST_CHUNK`` crops and double up to ``ADD_CHUNK``, so that the first
    ones are searchable within seconds of the start. Crops already indexed are re-encoded and
    replaced; deleted crops are skipped. With no index yet, the whole gallery is published
    this way (``first_build``). Raises ``StaleIndex`` when the live index was built by another
    checkpoint (build a full one). A live index that is corrupt or whose folder is gone is
    rebuilt in full (``rebuild``; else ``CorruptIndex``), these crops with the rest.
    """
    backend = as_backend(index)
    current = backend.current_version()
    if current is None:
        return first_build(session, encoder, crops_dir, backend, progress=progress,
                           options=options)
    refused = unusable(backend, current)
    if refused is not None:
        return _rebuild(session, encoder, crops_dir, backend, refused, rebuild, progress,
                        options)
    require_same_model(backend.manifest(current), current, encoder)
    items = records.indexable_items(session, crops_dir, crop_ids)
    return _add_in_chunks(session, encoder, backend, items, progress, options)


def _rebuild(session: Session, encoder: Encoder, crops_dir: Path, backend: IndexBackend,
             refused: str, rebuild: bool, progress: Progress | None,
             options: ReadOptions | None) -> BuildReport:
    """A full build in place of an unusable live version (not twice in a row: a build that
    comes out unusable again stops here)."""
    if not rebuild:
        raise CorruptIndex(f"{refused}; a full rebuild just published it: check the model "
                           "and the disk, then `tbps index --full`")
    log.warning("%s: building a full index instead", refused)
    return build_full(session, encoder, crops_dir, backend, progress=progress, options=options)


def first_build(session: Session, encoder: Encoder, crops_dir: Path, index: Index, *,
                progress: Progress | None = None,
                options: ReadOptions | None = None) -> BuildReport:
    """The first index of a gallery, searchable from its first chunk on: a base version of the
    first crops, then a generation per chunk. A killed run leaves the chunks published so far
    live; ``sync`` adds the rest. Galleries too large for exact search are compacted into the
    spec chosen for their size at the end."""
    backend, report = as_backend(index), None
    with backend.lock():
        if backend.current_version() is None:  # else another process built it meanwhile
            items = records.indexable_items(session, crops_dir)
            report = _add_in_chunks(session, encoder, backend, items, progress, options)
    if report is None:
        return sync(session, encoder, crops_dir, backend, progress=progress, options=options)
    report.full = True
    if report.indexed and not choose_spec(report.indexed).exact:
        report.version = compact(session, backend)
    return report


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


def sync(session: Session, encoder: Encoder, crops_dir: Path, index: Index, *,
         factory: str | None = None, progress: Progress | None = None,
         options: ReadOptions | None = None, rebuild: bool = True) -> BuildReport:
    """Bring the index up to date with the database without a rebuild when possible:
    add pending crops (and indexed ones missing from the index), drop deleted ones. A live
    version that is corrupt or gone is rebuilt (``rebuild``; else ``CorruptIndex``)."""
    backend = as_backend(index)
    if resume_unfinished(backend, encoder):
        log.info("resuming the unfinished full build of a killed run")
        return build_full(session, encoder, crops_dir, backend, factory=factory,
                          progress=progress, options=options)
    current = backend.current_version()
    refused = unusable(backend, current) if current is not None else None
    if refused is not None:
        return _rebuild(session, encoder, crops_dir, backend, refused, rebuild, progress,
                        options)
    if current is None or needs_full(backend.manifest(current), encoder, factory):
        return build_full(session, encoder, crops_dir, backend, factory=factory,
                          progress=progress, options=options)
    started = time.perf_counter()
    to_add, to_remove, in_index_pending = gallery_diff(session, backend.open(current).live_ids())
    records.mark_indexed(session, in_index_pending.tolist())
    session.commit()
    if len(to_remove):
        backend.remove(to_remove)
    report = add_crops(session, encoder, crops_dir, backend, to_add.tolist(),
                       progress=progress, options=options, rebuild=rebuild)
    report.removed, report.seconds = len(to_remove), time.perf_counter() - started
    if split_pointer(backend.current_version() or "")[1] > COMPACT_GENERATIONS:
        compact(session, backend)
    return report


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
    same crops, each with its camera and time, encoded by actors that load the encoder from
    ``encoder_options``; published, then recorded as ``build_full`` records its build."""
    from indexer.ray_index import CropItem, build_with_ray

    backend = as_backend(index)
    pairs = records.indexable_items(session, crops_dir)
    ids = np.asarray([cid for cid, _ in pairs], np.int64)
    cameras, times = records.crop_attributes(session)(ids)
    items = [CropItem(int(i), path, int(c), float(t))
             for (i, path), c, t in zip(pairs, cameras, times, strict=True)]
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

