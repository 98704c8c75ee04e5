"""The job worker: claims queued jobs from the database and runs them in this process.

``tbps worker`` runs it; ``tbps demo`` starts one beside the server (``TBPS_SPAWN_WORKER``).
Jobs: ``reindex`` (encode everything, publish a new index version) and ``add`` (encode the
pending crops only and publish the live index plus them: new uploads become searchable without
a full reindex). Searches keep using the old index until the atomic swap of the CURRENT pointer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from indexer import jobs as index_jobs
from indexer.pipeline import ReadOptions
from models.encoder import Encoder
from service import crud
from service.config import Settings
from service.db import session_scope
from service.orm import Job

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
SMALL_GALLERY = 256  # below this many crops, images are decoded in the worker itself


def _progress_writer(url: str, job_id: int, verb: str, every_s: float = 0.5) -> Progress:
    """A progress callback that writes to the job row at most every ``every_s`` seconds."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_s and done < total:
            return
        last[0] = now
        with session_scope(url) as s:
            crud.set_job_progress(s, job_id=job_id, progress=done / max(total, 1) * 0.95,
                                  message=f"{verb} {done}/{total} crops")

    return report


def run_reindex(session: Session, settings: Settings, encoder: Encoder, params: dict,
                progress: Progress) -> str:
    small = crud.count_crops(session) < SMALL_GALLERY  # reader processes would cost more
    report = index_jobs.build_full(session, encoder, settings.resolved_crops_dir,
                                   settings.resolved_index_dir,
                                   factory=params.get("factory") or None, progress=progress,
                                   options=ReadOptions(workers=0) if small else None)
    return (f"published index {report.version}: {report.indexed} crops indexed, "
            f"{len(report.failed)} failed, {report.seconds:.1f}s")


def run_add(session: Session, settings: Settings, encoder: Encoder, params: dict,
            progress: Progress) -> str:
    """Encode the pending crops only and publish them into the live index (no rebuild)."""
    pending = [crop.id for crop in crud.pending_crops(session)]
    if not pending:
        return "no pending crops"
    if hasattr(index_jobs, "add_crops"):
        report = index_jobs.add_crops(session, encoder, settings.resolved_crops_dir,
                                      settings.resolved_index_dir, pending, progress=progress)
        return (f"index {report.version}: {report.indexed} crops added, "
                f"{len(report.failed)} failed")
    return "this indexer has no incremental add: " + run_reindex(session, settings, encoder,
                                                                  params, progress)


def remove_from_index(settings: Settings, crop_ids: list[int]) -> None:
    """Hide deleted crops in the index too (the catalog already drops them from results)."""
    if hasattr(index_jobs, "remove_crops") and crop_ids:
        index_jobs.remove_crops(settings.resolved_index_dir, crop_ids)


RUNNERS = {"reindex": ("encoded", run_reindex), "add": ("encoded", run_add)}


def run_job(settings: Settings, encoder: Encoder, job: Job) -> bool:
    """Run one claimed job to the end; its row says how it went."""
    url = settings.resolved_database_url
    verb, runner = RUNNERS.get(job.kind, (None, None))
    try:
        if runner is None:
            raise ValueError(f"unknown job kind {job.kind!r}")
        with session_scope(url) as session:
            message = runner(session, settings, encoder, job.params or {},
                             _progress_writer(url, job.id, verb))
        ok = True
    except Exception as exc:  # the job fails, the worker goes on
        log.exception("job %s (%s) failed", job.id, job.kind)
        message, ok = f"{type(exc).__name__}: {exc}", False
    with session_scope(url) as session:
        crud.finish_job(session, job_id=job.id, ok=ok, message=message)
    log.info("job %s (%s) %s: %s", job.id, job.kind, "succeeded" if ok else "failed", message)
    return ok


def run_pending(settings: Settings, encoder: Encoder) -> int:
    """Run queued jobs until none is left; returns how many ran."""
    ran = 0
    while True:
        with session_scope(settings.resolved_database_url) as session:
            job = crud.claim_next_job(session)
        if job is None:
            return ran
        run_job(settings, encoder, job)
        ran += 1


def serve(settings: Settings, encoder: Encoder, *, stop: threading.Event | None = None,
          recover: bool = True) -> None:
    """Poll for jobs until ``stop`` is set. ``recover`` fails jobs a dead worker left running
    (right when this is the only worker)."""
    stop = stop or threading.Event()
    if recover:
        with session_scope(settings.resolved_database_url) as session:
            n = crud.fail_abandoned_jobs(session)
        if n:
            log.warning("marked %d abandoned running job(s) failed", n)
    log.info("worker polling %s every %.1fs", settings.resolved_database_url,
             settings.worker_poll_seconds)
    beat = settings.worker_heartbeat
    while not stop.is_set():
        beat.touch()
        if run_pending(settings, encoder) == 0:
            stop.wait(settings.worker_poll_seconds)
