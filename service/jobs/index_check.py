"""``tbps index --check``: does the live index agree with the database and with itself?"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from indexer.backends import BuildBusy, IndexBackend, IndexView, NoIndex
from indexer.backends.base import split_pointer
from indexer.pipeline import ReadOptions
from models.encoder import Encoder
from service.jobs import index_records as records
from service.jobs.index_jobs import Index, add_crops, as_backend, build_full, gallery_diff
from service.store import crud

log = logging.getLogger(__name__)

STRAY_AGE_S = 600.0  # files younger than this may belong to an upload still committing


@dataclass
class CheckReport:
    version: str | None
    index_count: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(session: Session, index: Index, *, encoder: Encoder | None = None,
          crops_dir: Path | None = None, repair: bool = True,
          options: ReadOptions | None = None) -> CheckReport:
    """Verify that the database and the live index agree; with ``repair``, fix what can be
    fixed (re-encoding needs ``encoder`` and ``crops_dir``; ``options`` is its reader)."""
    backend = as_backend(index)
    report = CheckReport(backend.current_version())
    can_encode = encoder is not None and crops_dir is not None
    live = _load(backend, report)
    if live is not None and encoder is not None and not live.manifest.built_by(encoder):
        report.problems.append("the live index was built by another checkpoint")
        live = None if repair and can_encode else live
    if live is None or any(p.startswith("corrupt") for p in report.problems):
        if repair and can_encode:
            built = build_full(session, encoder, crops_dir, backend, options=options)
            report.repaired.append(f"built a full index {built.version} "
                                   f"({built.indexed} crops)")
        return _finish(backend, report, repair)
    _check_database(session, backend, live, report, repair, encoder, crops_dir, options)
    if crops_dir is not None:
        _check_stray_files(session, Path(crops_dir), report, repair)
        _check_missing_files(session, Path(crops_dir), report)
    return _finish(backend, report, repair)


def _load(backend: IndexBackend, report: CheckReport) -> IndexView | None:
    """The live version, with the backend's own problems of it in ``report``."""
    if report.version is None:
        report.problems.append("no index has been published")
        return None
    report.problems += backend.check(report.version)
    if any(p.startswith("corrupt") for p in report.problems):
        return None
    live = backend.open(report.version)
    report.index_count = live.count
    return live


def _check_stray_files(session: Session, crops_dir: Path, report: CheckReport,
                       repair: bool) -> None:
    """Files in the crops folder that no crop row names (a failed upload, a crash between
    the write and the commit). Young files are left alone: an upload may be committing."""
    known, cutoff = records.stored_paths(session), time.time() - STRAY_AGE_S
    stray = [p for p in crops_dir.rglob("*") if p.is_file() and p.stat().st_mtime < cutoff
             and p.relative_to(crops_dir).as_posix() not in known]
    if not stray:
        return
    report.problems.append(f"{len(stray)} files in the crops folder belong to no crop")
    if repair:
        for path in stray:
            path.unlink(missing_ok=True)
        report.repaired.append(f"removed {len(stray)} files that belong to no crop")


def _check_missing_files(session: Session, crops_dir: Path, report: CheckReport) -> None:
    """Crops whose file is gone: nothing here can bring it back; uploading the same image
    again stores it (the upload answers `added`, not `duplicate`)."""
    missing = sorted(cid for cid, path in records.indexable_items(session, crops_dir)
                     if not path.is_file())
    if missing:
        shown = ", ".join(str(cid) for cid in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        report.problems.append(f"{len(missing)} crops have no file in the crops folder "
                               f"(ids {shown}{more}): upload those images again")


def _check_database(session: Session, backend: IndexBackend, live: IndexView,
                    report: CheckReport, repair: bool, encoder: Encoder | None,
                    crops_dir: Path | None, options: ReadOptions | None) -> None:
    to_add, to_remove, in_index_pending = gallery_diff(session, live.live_ids())
    if len(to_remove):
        report.problems.append(f"{len(to_remove)} deleted or unknown crops are in the index")
        if repair:
            backend.remove(to_remove)
            report.repaired.append(f"removed {len(to_remove)} crops from the index")
    if len(in_index_pending):
        report.problems.append(f"{len(in_index_pending)} crops are in the index but not "
                               "marked indexed")
        if repair:
            records.mark_indexed(session, in_index_pending.tolist())
            session.commit()
            report.repaired.append(f"marked {len(in_index_pending)} crops indexed")
    if len(to_add):
        report.problems.append(f"{len(to_add)} crops are pending or missing from the index")
        if repair and encoder is not None and crops_dir is not None:
            added = add_crops(session, encoder, crops_dir, backend, to_add.tolist(),
                              options=options)
            report.repaired.append(f"indexed {added.indexed} crops ({len(added.failed)} failed)")
    _check_version_row(session, backend, report, repair)


def _check_version_row(session: Session, backend: IndexBackend, report: CheckReport,
                       repair: bool) -> None:
    pointer = backend.current_version()
    base, _ = split_pointer(pointer)
    row = crud.live_index_version(session)
    if row is not None and row.version == base:
        return
    report.problems.append(f"the database does not record {base} as the live index")
    if repair:
        live = backend.open(pointer)
        records.record_live(session, version=base, path=backend.builds_dir / base,
                            manifest=live.manifest, count=live.count)
        session.commit()
        report.repaired.append(f"recorded {base} as live in the database")


def _finish(backend: IndexBackend, report: CheckReport, repair: bool) -> CheckReport:
    folder = backend.builds_dir
    leftovers = backend.unfinished()
    building = sorted(p.name for p in folder.glob(".building-*")) if folder.exists() else []
    if building:
        report.problems.append(f"an unfinished full build ({building[0]}): `tbps index` "
                               "resumes it")
    if leftovers:
        report.problems.append(f"{len(leftovers)} half-written version folders")
        if repair:
            try:
                with backend.lock():
                    backend.prune()
                report.repaired.append(f"removed {len(leftovers)} half-written folders")
            except BuildBusy:
                log.info("a build is running: leaving its staging folder alone")
    report.version = backend.current_version()
    return report


__all__ = ["CheckReport", "NoIndex", "check"]
