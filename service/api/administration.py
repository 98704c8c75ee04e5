"""Administration as plain functions: uploads, deletions, jobs, thumbnails. No FastAPI here."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PIL import Image
from sqlalchemy.orm import Session

from service.config import Settings
from service.jobs import index_jobs
from service.jobs.index_backend import backend_from_settings
from service.jobs.ingest import FileResult, ingest_bytes
from service.search.catalog import touch_stamp
from service.store import crud, storage
from service.store.orm import Crop, Job

log = logging.getLogger(__name__)


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Change:
    """What one admin change did: its audit row's target and detail, the crops it deleted."""

    target: str | None = None
    detail: dict | None = None
    deleted: list[int] = field(default_factory=list)


@contextmanager
def admin_change(session: Session, settings: Settings, *, action: str, actor: str,
                 client: str | None = None, target: str | None = None, notify: bool = True,
                 on_failure: Callable[[], None] | None = None) -> Iterator[Change]:
    """Every admin change goes change -> audit -> commit -> notify: the body makes the change
    and fills the yielded ``Change``; then its audit row is added and all is committed at
    once; then ``after_change`` tells the search processes (unless ``notify`` is False). Any
    exception rolls back, runs ``on_failure`` (undo what is not in the database) and goes on."""
    change = Change(target=target)
    try:
        yield change
        crud.add_audit(session, actor=actor, action=action, target=change.target,
                       detail=change.detail, client=client)
        session.commit()
    except BaseException:
        session.rollback()
        if on_failure is not None:
            on_failure()
        raise
    if notify:
        after_change(settings, deleted=change.deleted)


def upload_crops(session: Session, settings: Settings, files: list[Upload], *, camera: str,
                 captured_at: datetime | None, person_id: str | None, actor: str,
                 client: str | None = None) -> tuple[list[FileResult], Job | None]:
    """Store the good files, report every file, queue an ``add`` job when something is new.
    Files written here are removed again when the commit fails, so that no file is left
    without its row."""
    results: list[FileResult] = []
    job = None
    with admin_change(session, settings, action="crops.upload", actor=actor, client=client,
                      target=f"camera:{camera}",
                      on_failure=lambda: _discard(settings, results)) as change:
        for f in files:
            results.append(ingest_bytes(session, settings, name=f.name, data=f.data,
                                        camera=camera, captured_at=captured_at,
                                        person_id=person_id))
        if any(r.status == "added" for r in results):
            job = _queue_add(session, actor)
        change.detail = {"files": [_outcome(r) for r in results]}
    return results, job


def _outcome(r: FileResult) -> dict:
    return {"name": r.name, "status": r.status, "crop_id": r.crop_id, "reason": r.reason}


def _queue_add(session: Session, actor: str) -> Job:
    job = crud.active_job(session, kind="add")
    if job is None or job.status.value != "queued":
        job = crud.create_job(session, kind="add", created_by=actor)
    return job


def _discard(settings: Settings, results: list[FileResult]) -> None:
    for r in results:
        if r.new_file:
            try:
                storage.remove(r.new_file, settings.resolved_crops_dir)
            except OSError:  # `tbps index --check` finds it later
                log.exception("could not remove %s after a failed upload", r.new_file)


def delete_crops(session: Session, settings: Settings, crops: list[Crop]) -> list[int]:
    """Remove the crops' files and thumbnails, then mark them deleted. A file that cannot be
    removed raises ``StorageError`` before anything is committed (the caller rolls back),
    so that a retention delete never reports success while the image stays on disk. The
    caller commits, then calls ``after_change`` so every process drops them at once."""
    for crop in crops:
        storage.remove(crop.stored_path, settings.resolved_crops_dir)
        thumbnail_path(settings, crop).unlink(missing_ok=True)
    crud.mark_deleted(session, crops=crops)
    return [crop.id for crop in crops]


def after_change(settings: Settings, *, deleted: list[int] | None = None) -> None:
    """Committed crops were added, deleted or renamed: tell every search process; hide deleted
    crops in the index too (a tombstone generation, when the indexer offers one)."""
    try:
        touch_stamp(settings.data_dir, full=bool(deleted))
    except OSError:  # committed already: searches see it at their next full reload
        log.exception("could not write the catalog stamp")
    if deleted:
        try:
            index_jobs.remove_crops(backend_from_settings(settings), deleted)
        except Exception:  # the catalog already hides them; `tbps index` tidies up later
            log.exception("could not remove %d deleted crops from the index", len(deleted))


def thumbnail_path(settings: Settings, crop: Crop) -> Path:
    sha = crop.sha256
    return settings.resolved_thumbs_dir / sha[:2] / f"{sha}-{settings.thumbnail_size}.jpg"


def thumbnail(settings: Settings, crop: Crop) -> Path | bytes | None:
    """The crop's JPEG thumbnail, made on first request and cached content-addressed; its
    bytes when the cache cannot take it (a read-only or full data dir: served, not cached);
    None when the crop's file is missing."""
    target = thumbnail_path(settings, crop)
    if target.is_file():
        return target
    source = settings.resolved_crops_dir / crop.stored_path
    if not source.is_file():
        return None
    with Image.open(source) as im:
        im = im.convert("RGB")
        im.thumbnail((settings.thumbnail_size, settings.thumbnail_size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")  # unique per request
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("thumbnail of crop %s served uncached: %s", crop.id, exc.strerror or exc)
        return buf.getvalue()
    return target
