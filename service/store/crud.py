"""Data access as plain functions with keyword-only arguments. No FastAPI here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from service.store.orm import (
    ApiKey,
    AuditEntry,
    Camera,
    Crop,
    CropStatus,
    IndexStatus,
    IndexVersion,
    Job,
    JobStatus,
    as_utc,
    utcnow,
)

# job kinds that must not run twice at once; their kind is held in Job.active_key while active
EXCLUSIVE_JOBS = frozenset({"reindex"})


class JobConflict(RuntimeError):
    """An exclusive job of this kind is already queued or running."""

    def __init__(self, job: Job | None) -> None:
        super().__init__("a job of this kind is already queued or running")
        self.job = job


class DuplicateCrop(RuntimeError):
    """A crop with this content exists (a parallel upload stored it first)."""

    def __init__(self, crop: Crop) -> None:
        super().__init__(f"crop {crop.id} has the same content")
        self.crop = crop


def get_or_create_camera(session: Session, *, name: str) -> Camera:
    """Race-free: ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), then read it:
    parallel first uploads to a new camera all get the one row."""
    camera = session.scalar(select(Camera).where(Camera.name == name))
    if camera is not None:
        return camera
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(insert(Camera).values(name=name, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(Camera).where(Camera.name == name)
                           .execution_options(populate_existing=True)).one()


def get_crop_by_sha(session: Session, *, sha256: str) -> Crop | None:
    return session.scalar(select(Crop).where(Crop.sha256 == sha256))


def get_crop(session: Session, *, crop_id: int) -> Crop | None:
    return session.get(Crop, crop_id)


def crops_by_ids(session: Session, *, ids: Sequence[int]) -> dict[int, Crop]:
    """One query for all hits of a search, cameras included."""
    if not ids:
        return {}
    rows = session.scalars(
        select(Crop).options(joinedload(Crop.camera)).where(Crop.id.in_(list(ids)))
    )
    return {row.id: row for row in rows}


def add_crop(session: Session, *, sha256: str, stored_path: str, width: int, height: int,
             camera: Camera | None, captured_at: datetime | None, person_id: str | None,
             original_name: str | None) -> Crop:
    """A new pending crop. Raises ``DuplicateCrop`` (session still usable) when a parallel
    upload of the same content committed first."""
    try:
        with session.begin_nested():  # a savepoint: the unique sha256 lost a race
            crop = Crop(sha256=sha256, stored_path=stored_path, width=width, height=height,
                        camera=camera, captured_at=as_utc(captured_at), person_id=person_id,
                        original_name=original_name, status=CropStatus.pending)
            session.add(crop)
    except IntegrityError:
        existing = get_crop_by_sha(session, sha256=sha256)
        if existing is None:
            raise
        raise DuplicateCrop(existing) from None
    return crop


def indexable_crops(session: Session) -> list[Crop]:
    """Crops that belong in a full index: everything not deleted (failed ones are retried)."""
    stmt = select(Crop).where(Crop.status != CropStatus.deleted).order_by(Crop.id)
    return list(session.scalars(stmt))


def count_crops(session: Session, *, statuses: Iterable[CropStatus] | None = None) -> int:
    stmt = select(func.count(Crop.id))
    if statuses is not None:
        stmt = stmt.where(Crop.status.in_(list(statuses)))
    return int(session.scalar(stmt) or 0)


def live_index_version(session: Session) -> IndexVersion | None:
    stmt = select(IndexVersion).where(IndexVersion.status == IndexStatus.live)
    return session.scalar(stmt.order_by(IndexVersion.id.desc()))


def revive_crop(session: Session, crop: Crop, *, stored_path: str, camera: Camera | None,
                captured_at: datetime | None, person_id: str | None,
                original_name: str | None) -> Crop:
    """A deleted crop uploaded again: the same row, back to pending."""
    crop.stored_path, crop.camera, crop.captured_at = stored_path, camera, as_utc(captured_at)
    crop.person_id, crop.original_name = person_id, original_name
    crop.status, crop.error = CropStatus.pending, None
    crop.created_at = utcnow()  # new to the searchers' catalogs (see service.search.catalog)
    session.flush()
    return crop


def pending_crops(session: Session) -> list[Crop]:
    stmt = select(Crop).where(Crop.status == CropStatus.pending).order_by(Crop.id)
    return list(session.scalars(stmt))


def crops_to_delete(session: Session, *, camera_id: int | None = None,
                    time_from: datetime | None = None,
                    time_to: datetime | None = None) -> list[Crop]:
    """Crops (not yet deleted) of a camera and/or captured in a time range, for retention."""
    stmt = select(Crop).where(Crop.status != CropStatus.deleted)
    if camera_id is not None:
        stmt = stmt.where(Crop.camera_id == camera_id)
    if time_from is not None:
        stmt = stmt.where(Crop.captured_at >= as_utc(time_from))
    if time_to is not None:
        stmt = stmt.where(Crop.captured_at <= as_utc(time_to))
    return list(session.scalars(stmt.order_by(Crop.id)))


def list_crops(session: Session, *, camera_id: int | None = None, person_id: str | None = None,
               status: CropStatus | None = None, limit: int = 50,
               offset: int = 0) -> tuple[list[Crop], int]:
    """Crops not deleted, newest first, with their camera; and how many match in all."""
    where = [Crop.status != CropStatus.deleted]
    if camera_id is not None:
        where.append(Crop.camera_id == camera_id)
    if person_id is not None:
        where.append(Crop.person_id == person_id)
    if status is not None:
        where.append(Crop.status == status)
    total = session.scalar(select(func.count()).select_from(Crop).where(*where)) or 0
    stmt = (select(Crop).options(joinedload(Crop.camera)).where(*where)
            .order_by(Crop.id.desc()).limit(limit).offset(offset))
    return list(session.scalars(stmt)), total


def mark_deleted(session: Session, *, crops: Sequence[Crop]) -> None:
    for crop in crops:
        crop.status, crop.error = CropStatus.deleted, None
    session.flush()


def get_camera(session: Session, *, camera_id: int) -> Camera | None:
    return session.get(Camera, camera_id)


def get_camera_by_name(session: Session, *, name: str) -> Camera | None:
    return session.scalar(select(Camera).where(Camera.name == name))


def create_camera(session: Session, *, name: str, description: str | None) -> Camera:
    camera = Camera(name=name, description=description)
    session.add(camera)
    session.flush()
    return camera


def cameras_with_counts(session: Session) -> list[tuple[Camera, int]]:
    counts = (select(Crop.camera_id, func.count(Crop.id).label("n"))
              .where(Crop.status != CropStatus.deleted).group_by(Crop.camera_id).subquery())
    stmt = (select(Camera, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.camera_id == Camera.id).order_by(Camera.name))
    return [(cam, int(n)) for cam, n in session.execute(stmt).tuples()]


def crop_counts_by_status(session: Session) -> dict[str, int]:
    stmt = select(Crop.status, func.count(Crop.id)).group_by(Crop.status)
    return {status.value: int(n) for status, n in session.execute(stmt).tuples()}


def count_persons(session: Session) -> int:
    stmt = select(func.count(func.distinct(Crop.person_id))).where(
        Crop.status != CropStatus.deleted)
    return int(session.scalar(stmt) or 0)


def count_cameras(session: Session) -> int:
    return int(session.scalar(select(func.count(Camera.id))) or 0)


# --- jobs -------------------------------------------------------------------------------------

def create_job(session: Session, *, kind: str, params: dict[str, Any] | None = None,
               created_by: str | None = None) -> Job:
    """Queue a job. Raises ``JobConflict`` if an exclusive job of this kind is active."""
    job = Job(kind=kind, status=JobStatus.queued, progress=0.0, params=params,
              active_key=kind if kind in EXCLUSIVE_JOBS else None, created_by=created_by)
    try:
        with session.begin_nested():  # a savepoint: the conflict leaves the session usable
            session.add(job)
    except IntegrityError:
        raise JobConflict(active_job(session, kind=kind)) from None
    return job


def active_job(session: Session, *, kind: str) -> Job | None:
    stmt = select(Job).where(Job.kind == kind,
                             Job.status.in_([JobStatus.queued, JobStatus.running]))
    return session.scalar(stmt.order_by(Job.id))


def get_job(session: Session, *, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, *, limit: int = 20) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def claim_next_job(session: Session, *, lease_s: float = 30.0,
                   worker: str | None = None) -> Job | None:
    """Take the oldest queued job for this worker, so that no other worker takes it too; the
    job holds a lease of ``lease_s`` seconds that the worker renews (``renew_lease``).

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``. SQLite has no row locks: a guarded
    ``UPDATE ... WHERE status = 'queued'`` wins for exactly one worker.
    """
    stmt = select(Job).where(Job.status == JobStatus.queued).order_by(Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    job = session.scalar(stmt)
    if job is None:
        session.commit()
        return None
    now = utcnow()
    won = session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
                          .values(status=JobStatus.running, started_at=now, worker=worker,
                                  lease_until=now + timedelta(seconds=lease_s),
                                  attempts=Job.attempts + 1))
    session.commit()
    if won.rowcount != 1:
        return None
    session.refresh(job)
    return job


def renew_lease(session: Session, *, job_id: int, lease_s: float) -> bool:
    """Extend a running job's lease; False when the job is no longer running (reaped)."""
    result = session.execute(update(Job).where(Job.id == job_id,
                                               Job.status == JobStatus.running)
                             .values(lease_until=utcnow() + timedelta(seconds=lease_s)))
    return bool(result.rowcount)


def reap_expired_jobs(session: Session, *, max_attempts: int) -> tuple[int, int]:
    """Running jobs whose lease ran out (their worker died): queued again while they have
    attempts left, failed after ``max_attempts``. Returns (requeued, failed)."""
    expired = (Job.status == JobStatus.running) & (Job.lease_until < utcnow())
    requeued = session.execute(update(Job).where(expired, Job.attempts < max_attempts).values(
        status=JobStatus.queued, lease_until=None, worker=None, started_at=None,
        message="requeued: the worker running it stopped"))
    failed = session.execute(update(Job).where(expired).values(
        status=JobStatus.failed, lease_until=None, finished_at=utcnow(), active_key=None,
        message=f"failed: the worker running it stopped {max_attempts} times"))
    return int(requeued.rowcount or 0), int(failed.rowcount or 0)


def running_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status == JobStatus.running)))


def expire_leases(session: Session, *, job_ids: Sequence[int]) -> None:
    """Their worker is known dead: let ``reap_expired_jobs`` take them now."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(list(job_ids)))
                        .values(lease_until=utcnow() - timedelta(seconds=1)))


def queue_problem(session: Session, *, lease_s: float, stuck_s: float) -> str | None:
    """Why the job queue is stuck (a lease long expired and nobody reaped it, or a job queued
    for ``stuck_s`` with nothing running), or None when it moves."""
    now = utcnow()
    running = running_jobs(session)
    dead = [j for j in running if j.lease_until is not None
            and as_utc(j.lease_until) < now - timedelta(seconds=lease_s)]
    if dead:
        return f"job {dead[0].id} holds an expired lease: no worker is alive"
    oldest = session.scalar(select(Job).where(Job.status == JobStatus.queued).order_by(Job.id))
    if not running and oldest is not None:
        waited = (now - as_utc(oldest.created_at)).total_seconds()
        if waited > stuck_s:
            return f"job {oldest.id} has been queued {waited:.0f}s: no worker takes jobs"
    return None


def set_job_progress(session: Session, *, job_id: int, progress: float, message: str) -> None:
    session.execute(update(Job).where(Job.id == job_id)
                    .values(progress=max(0.0, min(1.0, progress)), message=message))


def finish_job(session: Session, *, job_id: int, ok: bool, message: str) -> None:
    status = JobStatus.succeeded if ok else JobStatus.failed
    values: dict[str, Any] = dict(status=status, message=message, finished_at=utcnow(),
                                  active_key=None)
    if ok:
        values["progress"] = 1.0
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def count_jobs_by_status(session: Session) -> dict[str, int]:
    stmt = select(Job.status, func.count(Job.id)).group_by(Job.status)
    return {status.value: int(n) for status, n in session.execute(stmt).tuples()}


def fail_abandoned_jobs(session: Session) -> int:
    """Jobs left running by a worker that died: failed, so that a new one can be queued."""
    result = session.execute(update(Job).where(Job.status == JobStatus.running).values(
        status=JobStatus.failed, finished_at=utcnow(), active_key=None,
        message="the worker stopped while running this job; queue it again"))
    return int(result.rowcount or 0)


# --- API keys and audit -----------------------------------------------------------------------

def active_key_digests(session: Session) -> dict[str, str]:
    """sha256 digest -> key name, for keys created with ``tbps create-key`` and not revoked."""
    stmt = select(ApiKey.key_sha256, ApiKey.name).where(ApiKey.revoked_at.is_(None))
    return dict(session.execute(stmt).tuples().all())


def add_api_key(session: Session, *, name: str, key_sha256: str) -> ApiKey:
    key = ApiKey(name=name, key_sha256=key_sha256)
    session.add(key)
    session.flush()
    return key


def revoke_api_key(session: Session, *, name: str) -> bool:
    key = session.scalar(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)))
    if key is None:
        return False
    key.revoked_at = utcnow()
    return True


def add_audit(session: Session, *, actor: str, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None, client: str | None = None) -> AuditEntry:
    entry = AuditEntry(actor=actor, action=action, target=target, detail=detail, client=client)
    session.add(entry)
    return entry


def list_audit(session: Session, *, limit: int, offset: int = 0,
               action: str | None = None) -> list[AuditEntry]:
    stmt = select(AuditEntry)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    return list(session.scalars(stmt.order_by(AuditEntry.id.desc()).offset(offset).limit(limit)))


def count_audit(session: Session, *, action: str) -> int:
    stmt = select(func.count(AuditEntry.id)).where(AuditEntry.action == action)
    return int(session.scalar(stmt) or 0)
