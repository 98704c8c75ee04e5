"""``tbps index --check``: does the live index agree with the database and with itself?"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from indexer import dbsync
from indexer.loaded import LoadedIndex
from indexer.store import IndexStore, split_pointer
from models.encoder import Encoder
from service import crud

log = logging.getLogger(__name__)

NORM_SAMPLE = 2000
STRAY_AGE_S = 600.0  # files younger than this may belong to an upload still committing


def run_check(session: Session, store: IndexStore, *, encoder: Encoder | None,
              crops_dir: Path | None, repair: bool):
    from indexer import jobs

    report = jobs.CheckReport(store.current_version())
    can_encode = encoder is not None and crops_dir is not None
    live = _load(store, report)
    if live is not None:
        report.index_count = live.count
        _check_files(live, report)
    if live is not None and encoder is not None and \
            live.manifest.get("checkpoint_sha256") != encoder.spec.checkpoint_sha256:
        report.problems.append("the live index was built by another checkpoint")
        live = None if repair and can_encode else live
    if live is None or any(p.startswith("corrupt") for p in report.problems):
        if repair and can_encode:
            built = jobs.build_full(session, encoder, crops_dir, store.root)
            report.repaired.append(f"built a full index {built.version} "
                                   f"({built.indexed} crops)")
        return _finish(store, report, repair)
    _check_database(session, store, live, report, repair, encoder, crops_dir)
    if crops_dir is not None:
        _check_stray_files(session, Path(crops_dir), report, repair)
    return _finish(store, report, repair)


def _check_stray_files(session: Session, crops_dir: Path, report, repair: bool) -> None:
    """Files in the crops folder that no crop row names (a failed upload, a crash between
    the write and the commit). Young files are left alone: an upload may be committing."""
    known, cutoff = dbsync.stored_paths(session), time.time() - STRAY_AGE_S
    stray = [p for p in crops_dir.rglob("*") if p.is_file() and p.stat().st_mtime < cutoff
             and p.relative_to(crops_dir).as_posix() not in known]
    if not stray:
        return
    report.problems.append(f"{len(stray)} files in the crops folder belong to no crop")
    if repair:
        for path in stray:
            path.unlink(missing_ok=True)
        report.repaired.append(f"removed {len(stray)} files that belong to no crop")


def _load(store: IndexStore, report) -> LoadedIndex | None:
    if report.version is None:
        report.problems.append("no index has been published")
        return None
    try:
        return store.load(report.version, use_gpu=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        report.problems.append(f"corrupt: index {report.version} cannot be loaded: {exc}")
        return None


def _check_files(live: LoadedIndex, report) -> None:
    """Counts, shapes, unique ids, first stage size, and vector norms on a sample."""
    m, n = live.manifest, len(live.ids)
    if m.get("count") != n or live.full.shape != (n, m.get("dim")):
        report.problems.append(f"corrupt: manifest says {m.get('count')}x{m.get('dim')}, "
                               f"files hold {live.full.shape} and {n} ids")
    if len(np.unique(live.ids)) != n:
        report.problems.append("corrupt: duplicate crop ids in the index")
    if live.first_stage is not None and live.first_stage.ntotal != n:
        report.problems.append(f"corrupt: first stage holds {live.first_stage.ntotal} of {n}")
    pick = np.linspace(0, n - 1, min(n, NORM_SAMPLE)).astype(np.int64) if n else []
    norms = np.linalg.norm(np.asarray(live.full[pick], np.float32), axis=1)
    expect = _expected_norm(m.get("encoder", {}).get("parts", []))
    if len(norms) and not np.allclose(norms, expect, atol=1e-2):
        report.problems.append(f"corrupt: stored vectors are not of norm {expect:.3f}")


def _expected_norm(parts: list[dict]) -> float:
    groups = {p.get("group") or p.get("name") for p in parts}
    return float(np.sqrt(len(groups) or 1))


def _check_database(session: Session, store: IndexStore, live: LoadedIndex, report,
                    repair: bool, encoder: Encoder | None, crops_dir: Path | None) -> None:
    from indexer import jobs

    to_add, to_remove, in_index_pending = jobs._diff(session, live.live_ids())
    if len(to_remove):
        report.problems.append(f"{len(to_remove)} deleted or unknown crops are in the index")
        if repair:
            jobs.remove_crops(store.root, to_remove)
            report.repaired.append(f"removed {len(to_remove)} crops from the index")
    if len(in_index_pending):
        report.problems.append(f"{len(in_index_pending)} crops are in the index but not "
                               "marked indexed")
        if repair:
            dbsync.mark_indexed(session, in_index_pending.tolist())
            session.commit()
            report.repaired.append(f"marked {len(in_index_pending)} crops indexed")
    if len(to_add):
        report.problems.append(f"{len(to_add)} crops are pending or missing from the index")
        if repair and encoder is not None and crops_dir is not None:
            added = jobs.add_crops(session, encoder, crops_dir, store.root, to_add.tolist())
            report.repaired.append(f"indexed {added.indexed} crops ({len(added.failed)} failed)")
    _check_version_row(session, store, report, repair)


def _check_version_row(session: Session, store: IndexStore, report, repair: bool) -> None:
    pointer = store.current_version()
    base, _ = split_pointer(pointer)
    row = crud.live_index_version(session)
    if row is not None and row.version == base:
        return
    report.problems.append(f"the database does not record {base} as the live index")
    if repair:
        live = store.load(pointer, use_gpu=False)
        dbsync.record_live(session, version=base, path=store.versions / base,
                           manifest=live.manifest, count=live.count)
        session.commit()
        report.repaired.append(f"recorded {base} as live in the database")


def _finish(store: IndexStore, report, repair: bool):
    from indexer.jobs import BuildBusy, build_lock

    leftovers = [p.name for p in store.versions.glob(".staging-*")] \
        if store.versions.exists() else []
    building = [p.name for p in store.versions.glob(".building-*")] \
        if store.versions.exists() else []
    if building:
        report.problems.append(f"an unfinished full build ({building[0]}): `tbps index` "
                               "resumes it")
    if leftovers:
        report.problems.append(f"{len(leftovers)} half-written version folders")
        if repair:
            try:
                with build_lock(store):
                    store.prune()
                report.repaired.append(f"removed {len(leftovers)} half-written folders")
            except BuildBusy:
                log.info("a build is running: leaving its staging folder alone")
    report.version = store.current_version()
    return report
