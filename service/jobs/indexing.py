"""What the service knows about indexing the gallery: which job brings the index up to date,
and how far the running one is (for the page, ``GET /status`` and ``/readyz``).

The worker runs the jobs; this module only queues them and reads their rows and the crops'
statuses. No FastAPI imports here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from service.config import Settings
from service.jobs.index_backend import backend_from_settings
from service.jobs.index_jobs import unusable
from service.store import crud
from service.store.orm import CropStatus, Job, as_utc

log = logging.getLogger(__name__)

INDEX_JOBS = ("add", "reindex")
ENCODING_SHARE = 0.95  # a job's progress runs to this while it encodes; the rest is publishing


@dataclass(frozen=True)
class IndexingState:
    """An index job queued or running, and the gallery's crops done so far."""

    job_id: int
    kind: str
    status: str  # queued | running
    done: int  # crops indexed (or failed) in the whole gallery
    total: int  # crops not deleted
    eta_s: float | None  # None until the job has made measurable progress
    message: str | None
    progress: float = 0.0  # the job's own fraction done, 0-1
    more_queued: bool = False  # another index job waits behind this one (eta_s is this job's)


@dataclass(frozen=True)
class GalleryState:
    crops: int  # not deleted
    indexed: int
    pending: int
    failed: int
    indexing: IndexingState | None


def _active_index_jobs(session: Session) -> list[Job]:
    """Queued or running index jobs among the latest 50 jobs, oldest first."""
    jobs = [j for k in INDEX_JOBS for j in crud.list_jobs(session, limit=50)
            if j.kind == k and j.status.value in ("queued", "running")]
    return sorted(jobs, key=lambda j: j.id)


def _active_index_job(session: Session) -> Job | None:
    jobs = _active_index_jobs(session)
    return jobs[0] if jobs else None


def eta_seconds(job: Job, now: datetime | None = None) -> float | None:
    """Time left from the job's own progress fraction and how long it has run."""
    if job.started_at is None or not job.progress or job.progress <= 0:
        return None
    elapsed = ((now or datetime.now(UTC)) - as_utc(job.started_at)).total_seconds()
    return max(0.0, elapsed * (1.0 - job.progress) / job.progress)


def gallery_state(session: Session) -> GalleryState:
    counts = crud.crop_counts_by_status(session)
    indexed, pending = counts.get("indexed", 0), counts.get("pending", 0)
    failed = counts.get("failed", 0)
    total = indexed + pending + failed
    jobs = _active_index_jobs(session)
    indexing = None
    if jobs:
        job = jobs[0]
        indexing = IndexingState(job.id, job.kind, job.status.value,
                                 _done(job, indexed + failed, total), total, eta_seconds(job),
                                 job.message, float(job.progress or 0.0),
                                 more_queued=len(jobs) > 1)
    return GalleryState(total, indexed, pending, failed, indexing)


def _done(job: Job, settled: int, total: int) -> int:
    """Crops done so far: those a running full reindex has encoded into its new version
    (their statuses change only when it goes live), else those indexed or failed."""
    if job.kind != "reindex" or job.status.value != "running":
        return settled
    return min(total, round(float(job.progress or 0.0) / ENCODING_SHARE * total))


def describe(state: IndexingState) -> str:
    """One line for logs, /readyz and the page: ``indexing: 23% done, ETA 190 s; 1024 of 4527
    crops indexed``. The percentage and the ETA are the running job's, one of each; the count
    is the gallery's (a job may add a few crops to a large gallery)."""
    if state.status == "queued":
        return f"an index job is queued ({state.total} crops in the gallery)"
    eta = f", ETA {state.eta_s:.0f} s" if state.eta_s is not None else ""
    if eta and state.more_queued:
        eta += " for this job (more crops are queued after it)"
    return (f"indexing: {state.progress:.0%} done{eta}; {state.done} of {state.total} "
            "crops indexed")


def checkpoint_sha(settings: Settings) -> str | None:
    """The sha256 of the configured checkpoint file, without loading the model (None for the
    untrained stand-in, which has no file)."""
    from models.factory import DEFAULT_CHECKPOINT, file_sha256

    path = settings.checkpoint or DEFAULT_CHECKPOINT
    return file_sha256(Path(path)) if Path(path).is_file() else None


def job_needed(session: Session, settings: Settings) -> str | None:
    """The job kind that brings the index up to date: ``add`` (pending crops, or no usable
    index: the first build is searchable as it grows, a corrupt or deleted one is rebuilt),
    ``reindex`` (built by another checkpoint), or None."""
    backend = backend_from_settings(settings)
    pointer = backend.current_version()
    if pointer is None or unusable(backend, pointer):  # an add job builds one (rebuilds it)
        return "add" if crud.count_crops(session) else None
    sha = checkpoint_sha(settings)
    if sha is not None and not backend.manifest(pointer).built_by(sha):
        return "reindex"
    return "add" if crud.count_crops(session, statuses=[CropStatus.pending]) else None


def queue_index_job(session: Session, settings: Settings, *, created_by: str) -> Job | None:
    """Queue the job ``job_needed`` names, unless an index job is queued already (a running
    one does not count: crops added since it started need the next one)."""
    kind = job_needed(session, settings)
    if kind is None:
        return None
    active = _active_index_job(session)
    if active is not None and (active.status.value == "queued" or kind == "reindex"):
        return active
    try:
        return crud.create_job(session, kind=kind, created_by=created_by)
    except crud.JobConflict as exc:
        return exc.job
