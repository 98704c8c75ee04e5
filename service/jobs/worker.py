"""The job worker: claims queued jobs from the database and runs them in this process.

``tbps worker`` runs it; ``tbps demo`` starts one beside the server (``TBPS_SPAWN_WORKER``).
Jobs: ``reindex`` (encode everything, publish a new index version) and ``add`` (encode the
pending crops only and publish the live index plus them: new uploads become searchable without
a full reindex). Searches keep using the old index until the atomic swap of the CURRENT pointer.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from indexer.pipeline import ReadOptions
from models.encoder import Encoder
from service.config import Settings
from service.jobs import index_jobs
from service.jobs.index_backend import backend_from_settings
from service.jobs.indexing import ENCODING_SHARE
from service.store import crud
from service.store.db import session_scope
from service.store.orm import Job

log = logging.getLogger(__name__)

PARENT_POLL_S = 1.0

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
            crud.set_job_progress(s, job_id=job_id,
                                  progress=done / max(total, 1) * ENCODING_SHARE,
                                  message=f"{verb} {done}/{total} crops")

    return report


def read_options(settings: Settings, crops: int) -> ReadOptions:
    """The reader of a job over ``crops`` crops: the settings' image limits; decoding in this
    process for a small gallery (reader processes would cost more than they save)."""
    return ReadOptions(workers=0 if crops < SMALL_GALLERY else None, limits=settings.image_limits)


def run_reindex(session: Session, settings: Settings, encoder: Encoder, params: dict,
                progress: Progress) -> str:
    report = index_jobs.build_full(session, encoder, settings.resolved_crops_dir,
                                   backend_from_settings(settings),
                                   factory=params.get("factory") or None, progress=progress,
                                   options=read_options(settings, crud.count_crops(session)))
    return (f"published index {report.version}: {report.indexed} crops indexed, "
            f"{len(report.failed)} failed, {report.seconds:.1f}s")


def run_add(session: Session, settings: Settings, encoder: Encoder, params: dict,
            progress: Progress) -> str:
    """Encode the pending crops only and publish them into the live index (no rebuild)."""
    pending = [crop.id for crop in crud.pending_crops(session)]
    if not pending:
        return "no pending crops"
    report = index_jobs.add_crops(session, encoder, settings.resolved_crops_dir,
                                  backend_from_settings(settings), pending, progress=progress,
                                  options=read_options(settings, len(pending)))
    return f"index {report.version}: {report.indexed} crops added, {len(report.failed)} failed"


RUNNERS = {"reindex": ("encoded", run_reindex), "add": ("encoded", run_add)}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def lease_keeper(settings: Settings, job_id: int) -> Iterator[None]:
    """Renew the job's lease every third of its length while the body runs: a worker that is
    killed stops renewing, and ``reap`` gives the job to another worker."""
    url, lease_s = settings.resolved_database_url, settings.job_lease_seconds
    done = threading.Event()

    def renew() -> None:
        while not done.wait(lease_s / 3):
            try:
                with session_scope(url) as session:
                    crud.renew_lease(session, job_id=job_id, lease_s=lease_s)
            except Exception:  # a database hiccup: the next renewal tries again
                log.exception("could not renew the lease of job %s", job_id)

    thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def reap(settings: Settings) -> tuple[int, int]:
    """Requeue (or fail, after too many attempts) jobs whose worker died."""
    with session_scope(settings.resolved_database_url) as session:
        requeued, failed = crud.reap_expired_jobs(session, max_attempts=settings.job_max_attempts)
    if requeued or failed:
        log.warning("jobs of a dead worker: %d requeued, %d failed", requeued, failed)
    return requeued, failed


def run_job(settings: Settings, encoder: Encoder, job: Job) -> bool:
    """Run one claimed job to the end; its row says how it went."""
    url = settings.resolved_database_url
    verb, runner = RUNNERS.get(job.kind, (None, None))
    try:
        if runner is None:
            raise ValueError(f"unknown job kind {job.kind!r}")
        with lease_keeper(settings, job.id), session_scope(url) as session:
            message = runner(session, settings, encoder, job.params or {},
                             _progress_writer(url, job.id, verb))
        ok = True
    except Exception as exc:  # the job fails, the worker goes on
        log.exception("job %s (%s) failed", job.id, job.kind)
        message, ok = public_message(settings, exc), False
    with session_scope(url) as session:
        crud.finish_job(session, job_id=job.id, ok=ok, message=message)
    log.info("job %s (%s) %s: %s", job.id, job.kind, "succeeded" if ok else "failed", message)
    return ok


# the folders of an absolute path (what is left is the file's own name)
ABSOLUTE_FOLDERS = re.compile(r"(?<![\w.~<>-])/(?:[^\s'\"/]+/)+")


def public_message(settings: Settings, exc: Exception) -> str:
    """A failed job's message for the admin API: the error with no absolute path of this
    server (the data dir as ``<data dir>``, other folders dropped); the log has it whole."""
    text = f"{type(exc).__name__}: {exc}"
    text = text.replace(str(Path(settings.data_dir).resolve()), "<data dir>")
    return ABSOLUTE_FOLDERS.sub("", text)


def run_pending(settings: Settings, encoder: Encoder) -> int:
    """Run queued jobs (and those of dead workers) until none is left; returns how many ran."""
    ran, name = 0, worker_name()
    while True:
        reap(settings)
        with session_scope(settings.resolved_database_url) as session:
            job = crud.claim_next_job(session, lease_s=settings.job_lease_seconds, worker=name)
        if job is None:
            return ran
        run_job(settings, encoder, job)
        ran += 1


def _alive_here(worker: str | None) -> bool:
    """False when ``worker`` (host:pid) names a process of this host that no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: its lease tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(settings: Settings) -> tuple[int, int]:
    """At start: jobs whose worker was a process of this host that is gone are reaped at once
    (requeued within their attempts); other workers' jobs wait for their lease to run out."""
    with session_scope(settings.resolved_database_url) as session:
        dead = [j.id for j in crud.running_jobs(session) if not _alive_here(j.worker)]
        crud.expire_leases(session, job_ids=dead)
    return reap(settings)


def serve(settings: Settings, encoder: Encoder, *, stop: threading.Event | None = None,
          recover_jobs: bool = True) -> None:
    """Poll for jobs until ``stop`` is set; ``recover_jobs``: first reap the jobs of dead
    workers of this host at once (else when their lease runs out)."""
    stop = stop or threading.Event()
    if recover_jobs:
        recover(settings)
    log.info("worker polling %s every %.1fs", settings.resolved_database_url,
             settings.worker_poll_seconds)
    beat = settings.worker_heartbeat
    while not stop.is_set():
        beat.touch()
        if run_pending(settings, encoder) == 0:
            stop.wait(settings.worker_poll_seconds)


def die_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """End this process when ``parent_pid`` (the API that spawned it) is gone: a thread
    checks every ``poll_s`` that this process was not handed to another parent (on Linux the
    kernel's parent-death signal, ``service.jobs.supervisor``, usually kills it first). A job
    stopped so is requeued by the next worker when its lease runs out."""
    def gone() -> None:
        log.error("the process that started this worker (pid %d) is gone: exiting", parent_pid)
        os._exit(70)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        gone()

    if os.getppid() != parent_pid:
        gone()
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
