"""Admin endpoints: every one needs an admin API key in X-API-Key and is audited."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from indexer.spec import FACTORY_PATTERN
from service.api import administration as admin
from service.api.deps import Actor, AdminDep, EngineDep, JsonBody, SessionDep, SettingsDep
from service.api.schemas import (
    BACKEND_DOWN,
    BAD_BODY,
    JSON_BODY,
    STORAGE_ERRORS,
    AdminCrop,
    AdminCropPage,
    AuditOut,
    CameraIn,
    CameraOut,
    CameraRename,
    DeleteResponse,
    ErrorResponse,
    FileOutcome,
    IndexInfo,
    JobOut,
    Label,
    Stats,
    UploadResponse,
    UTCDateTime,
)
from service.config import Settings
from service.jobs.index_backend import index_spec_problem
from service.search.urls import crop_url
from service.store import crud
from service.store.orm import Crop, CropStatus

AUTH_ERRORS = {401: {"model": ErrorResponse, "description": "No X-API-Key"},
               403: {"model": ErrorResponse, "description": "X-API-Key not valid"}}
router = APIRouter(prefix="/admin", tags=["admin"], responses=AUTH_ERRORS)


def _not_found(what: str) -> dict:
    return {404: {"model": ErrorResponse, "description": f"No such {what}"}}


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    factory: str | None = Field(None, max_length=128, pattern=FACTORY_PATTERN,
                                description="FAISS factory string of the first stage, "
                                "\"full:\"-prefixed to index whole vectors; default: chosen "
                                "by gallery size (exact search up to 100k crops).",
                                examples=["Flat", "IVF1024_HNSW32,SQ8", "full:IVF1024,PQ64"])


def _change(session: Session, settings: Settings, actor: Actor, action: str, *,
            target: str | None = None, notify: bool = True):
    """``admin.admin_change`` for the key that called: change -> audit -> commit -> notify."""
    return admin.admin_change(session, settings, action=action, actor=actor.name,
                              client=actor.client, target=target, notify=notify)


def _read_upload(file: UploadFile, limit: int) -> bytes:
    """At most ``limit + 1`` bytes: enough to tell that a file is too large."""
    return file.file.read(limit + 1)


@router.post("/crops", response_model=UploadResponse, responses={
    **BAD_BODY, 413: {"model": ErrorResponse, "description": "Too many files in one request"},
    422: {"description": "No file was accepted (`detail` has one entry per file, `files` "
          "the outcomes), or the form is not valid"},
    **STORAGE_ERRORS})
def upload_crops(
    request: Request, session: SessionDep, settings: SettingsDep, actor: AdminDep,
    files: Annotated[list[UploadFile], File(min_length=1,
                                            description="One or more JPEG/PNG/BMP/WebP crops")],
    camera: Annotated[Label, Form(description="Camera name; created when new (no control "
                                  "characters; surrounding spaces are dropped)",
                                  examples=["gate-3"])],
    captured_at: Annotated[UTCDateTime | None, Form(
        description="When the crops were captured (ISO 8601); leave out when unknown: such "
        "crops are searchable but never pass a time filter",
        examples=["2026-05-01T12:30:00Z"])] = None,
    person_id: Annotated[Label | None, Form(description="Person/track id (no control "
                                            "characters)", examples=["track-0017"])] = None,
) -> UploadResponse | JSONResponse:
    """Add crops. Each file is checked by content, size and pixels; duplicates are found by
    content hash and reported (status `duplicate`, the crop they repeat in `crop_id`). Good
    files are kept even when others in the batch are refused; an `add` job makes them
    searchable without a full reindex. `captured_at` is optional."""
    if len(files) > settings.max_files_per_upload:
        raise HTTPException(status_code=413, detail=f"{len(files)} files; send at most "
                            f"{settings.max_files_per_upload} per request")
    uploads = [admin.Upload(f.filename or f"file-{i}", _read_upload(f, settings.max_upload_bytes))
               for i, f in enumerate(files, 1)]
    results, job = admin.upload_crops(session, settings, uploads, camera=camera,
                                      captured_at=captured_at, person_id=person_id or None,
                                      actor=actor.name, client=actor.client)
    outcomes = [FileOutcome(name=r.name, status=r.status, crop_id=r.crop_id, reason=r.reason)
                for r in results]
    for o in outcomes:
        request.app.state.metrics.uploads.labels(o.status).inc()
    count = {s: sum(o.status == s for o in outcomes) for s in ("added", "duplicate", "rejected")}
    body = UploadResponse(added=count["added"], duplicates=count["duplicate"],
                          rejected=count["rejected"], files=outcomes,
                          job=JobOut.model_validate(job) if job else None)
    if count["rejected"] == len(outcomes):
        return refused(body)
    return body


def refused(body: UploadResponse) -> JSONResponse:
    """422 in the validation-error shape (one entry per file), plus the upload's outcome."""
    detail = [{"loc": ["body", "files", i], "msg": o.reason or "refused", "type": "file_refused"}
              for i, o in enumerate(body.files)]
    message = "no file was accepted: " + "; ".join(f"{o.name}: {o.reason}" for o in body.files)
    return JSONResponse(status_code=422, content={**body.model_dump(mode="json"),
                                                  "detail": detail, "message": message})


@router.get("/crops", response_model=AdminCropPage, responses=_not_found("camera"))
def list_crops(
    session: SessionDep, settings: SettingsDep, _actor: AdminDep,
    camera: Annotated[Label | None, Query(description="Only this camera's crops",
                                          examples=["gate-3"])] = None,
    person_id: Annotated[Label | None, Query(description="Only this person/track id's crops",
                                             examples=["track-0017"])] = None,
    status: Annotated[Literal["pending", "indexed", "failed"] | None, Query(
        description="Only crops in this state", examples=["failed"])] = None,
    limit: Annotated[int, Query(ge=1, le=200, examples=[48])] = 48,
    offset: Annotated[int, Query(ge=0, le=10**9, examples=[0])] = 0,
) -> AdminCropPage:
    """Browse the gallery's crops (not deleted), newest first, to view or delete them; image
    URLs are signed when searches need a key."""
    camera_id = _camera_id(session, camera)
    crops, total = crud.list_crops(session, camera_id=camera_id, person_id=person_id,
                                   status=CropStatus(status) if status else None, limit=limit,
                                   offset=offset)
    return AdminCropPage(total=total, crops=[_admin_crop(settings, c) for c in crops])


def _admin_crop(settings: Settings, crop: Crop) -> AdminCrop:
    return AdminCrop(crop_id=crop.id, status=crop.status.value, error=crop.error,
                     camera=crop.camera.name if crop.camera else None,
                     captured_at=crop.captured_at, person_id=crop.person_id,
                     file_name=crop.original_name, width=crop.width, height=crop.height,
                     added_at=crop.created_at, image_url=crop_url(settings, crop.id, "image"),
                     thumbnail_url=crop_url(settings, crop.id, "thumbnail"))


@router.delete("/crops/{crop_id}", response_model=DeleteResponse,
               responses={**_not_found("crop"), **STORAGE_ERRORS})
def delete_crop(session: SessionDep, settings: SettingsDep, actor: AdminDep,
                crop_id: int = Path(..., ge=1, le=2**62, examples=[42])) -> DeleteResponse:
    """Delete one crop: gone from search results at once, its file removed."""
    crop = crud.get_crop(session, crop_id=crop_id)
    if crop is None or crop.status.value == "deleted":
        raise HTTPException(status_code=404, detail=f"no crop with id {crop_id}")
    with _change(session, settings, actor, "crops.delete", target=f"crop:{crop_id}") as change:
        change.deleted = admin.delete_crops(session, settings, [crop])
    return DeleteResponse(deleted=len(change.deleted), crop_ids=change.deleted)


@router.delete("/crops", response_model=DeleteResponse, responses={
    **_not_found("camera"), **STORAGE_ERRORS})
def delete_crops_by_range(
    session: SessionDep, settings: SettingsDep, actor: AdminDep,
    camera: Annotated[Label | None, Query(description="Camera name",
                                          examples=["gate-3"])] = None,
    time_from: Annotated[UTCDateTime | None, Query(description="Captured at or after (ISO "
                                                   "8601)", examples=["2026-01-01T00:00:00Z"])
                         ] = None,
    time_to: Annotated[UTCDateTime | None, Query(description="Captured at or before (ISO 8601)",
                                                 examples=["2026-02-01T00:00:00Z"])] = None,
) -> DeleteResponse | JSONResponse:
    """Retention: delete every crop of a camera and/or captured in a time range (at least one
    filter is required). Gone from results at once, files removed."""
    if camera is None and time_from is None and time_to is None:
        return JSONResponse(status_code=422, content={
            "detail": [{"loc": ["query", "filters"], "msg": "give camera, time_from or time_to",
                        "type": "missing"}],
            "message": "give camera, time_from or time_to: deleting everything is not offered"})
    camera_id = _camera_id(session, camera)
    crops = crud.crops_to_delete(session, camera_id=camera_id, time_from=time_from,
                                 time_to=time_to)
    with _change(session, settings, actor, "crops.delete_range",
                 target=f"camera:{camera}" if camera else None) as change:
        change.deleted = admin.delete_crops(session, settings, crops)
        change.detail = {"time_from": time_from.isoformat() if time_from else None,
                         "time_to": time_to.isoformat() if time_to else None,
                         "deleted": len(change.deleted)}
    return DeleteResponse(deleted=len(change.deleted), crop_ids=change.deleted)


@router.post("/reindex", response_model=JobOut, status_code=202, dependencies=[JsonBody],
             responses={**JSON_BODY, 409: {"model": ErrorResponse, "description": "A reindex "
                                           "is already queued or running"}})
def reindex(session: SessionDep, actor: AdminDep, engine: EngineDep, settings: SettingsDep,
            body: ReindexRequest | None = None) -> JobOut:
    """Queue a full reindex. A worker process runs it; searches keep using the live index
    until the new one is swapped in atomically. Follow it with GET /admin/jobs/{id}. A
    `factory` the index backend cannot build is refused here (422), before any encoding."""
    params = {"factory": body.factory} if body and body.factory else {}
    problem = index_spec_problem(settings, body.factory, engine.encoder.spec) if params else None
    if problem:
        raise RequestValidationError([{"loc": ("body", "factory"), "msg": problem,
                                       "type": "value_error"}])
    with _change(session, settings, actor, "reindex", notify=False) as change:
        try:
            job = crud.create_job(session, kind="reindex", params=params, created_by=actor.name)
        except crud.JobConflict as exc:
            active = f" (job {exc.job.id}, {exc.job.status.value})" if exc.job else ""
            raise HTTPException(status_code=409, detail="a reindex is already queued or "
                                f"running{active}") from None
        change.target, change.detail = f"job:{job.id}", params or None
    return JobOut.model_validate(job)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_not_found("job"))
def get_job(session: SessionDep, _actor: AdminDep,
            job_id: int = Path(..., ge=1, le=2**62, examples=[7])) -> JobOut:
    """A job's status (queued, running, succeeded, failed) and progress."""
    job = crud.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job with id {job_id}")
    return JobOut.model_validate(job)


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(session: SessionDep, _actor: AdminDep,
              limit: Annotated[int, Query(ge=1, le=200, examples=[20])] = 20) -> list[JobOut]:
    """The most recent jobs, newest first."""
    return [JobOut.model_validate(j) for j in crud.list_jobs(session, limit=limit)]


def _camera_out(cam, count: int) -> CameraOut:
    return CameraOut(id=cam.id, name=cam.name, description=cam.description, crop_count=count,
                     created_at=cam.created_at)


@router.get("/cameras", response_model=list[CameraOut])
def list_cameras(session: SessionDep, _actor: AdminDep) -> list[CameraOut]:
    """Every camera with its number of crops."""
    return [_camera_out(cam, n) for cam, n in crud.cameras_with_counts(session)]


@router.post("/cameras", response_model=CameraOut, status_code=201, dependencies=[JsonBody],
             responses={**JSON_BODY, 409: {"model": ErrorResponse, "description": "Name taken"}})
def create_camera(body: CameraIn, session: SessionDep, settings: SettingsDep,
                  actor: AdminDep) -> CameraOut:
    """Create a camera (uploads create unknown cameras too)."""
    if crud.get_camera_by_name(session, name=body.name) is not None:
        raise HTTPException(status_code=409, detail=f"a camera named {body.name!r} exists")
    with _change(session, settings, actor, "cameras.create") as change:
        cam = crud.create_camera(session, name=body.name, description=body.description)
        change.target, change.detail = f"camera:{cam.id}", {"name": body.name}
    return _camera_out(cam, 0)


@router.patch("/cameras/{camera_id}", response_model=CameraOut, dependencies=[JsonBody],
              responses={**JSON_BODY, **_not_found("camera"),
                         409: {"model": ErrorResponse, "description": "Name taken"}})
def rename_camera(body: CameraRename, session: SessionDep, settings: SettingsDep,
                  actor: AdminDep,
                  camera_id: int = Path(..., ge=1, le=2**62, examples=[1])) -> CameraOut:
    """Rename a camera (and optionally change its description)."""
    cam = crud.get_camera(session, camera_id=camera_id)
    if cam is None:
        raise HTTPException(status_code=404, detail=f"no camera with id {camera_id}")
    old = cam.name
    other = crud.get_camera_by_name(session, name=body.name)
    if other is not None and other.id != cam.id:
        raise HTTPException(status_code=409, detail=f"a camera named {body.name!r} exists")
    with _change(session, settings, actor, "cameras.rename", target=f"camera:{cam.id}") as change:
        cam.name = body.name
        if body.description is not None:
            cam.description = body.description
        try:
            session.flush()
        except IntegrityError:
            raise HTTPException(status_code=409,
                                detail=f"a camera named {body.name!r} exists") from None
        change.detail = {"from": old, "to": body.name}
    count = dict((c.id, n) for c, n in crud.cameras_with_counts(session)).get(cam.id, 0)
    return _camera_out(cam, count)


@router.get("/stats", response_model=Stats, responses=BACKEND_DOWN)
def stats(request: Request, session: SessionDep, engine: EngineDep, _actor: AdminDep) -> Stats:
    """Gallery, index, job and search counts."""
    request.app.state.audit.flush()
    live = engine.live_index()
    info = IndexInfo(version=live.version, count=live.count,
                     dim=live.manifest.dim, factory=live.manifest.factory) if live else IndexInfo()
    return Stats(crops=crud.crop_counts_by_status(session), cameras=crud.count_cameras(session),
                 persons=crud.count_persons(session), index=info,
                 jobs=crud.count_jobs_by_status(session),
                 searches=crud.count_audit(session, action="search"))


@router.get("/audit", response_model=list[AuditOut])
def audit_log(request: Request, session: SessionDep, _actor: AdminDep,
              limit: Annotated[int, Query(ge=1, le=500, examples=[50])] = 50,
              offset: Annotated[int, Query(ge=0, le=10**9, examples=[0])] = 0,
              action: Annotated[str | None, Query(max_length=64, examples=["search"])] = None,
              ) -> list[AuditOut]:
    """Searches and admin actions, newest first: who, when, what."""
    request.app.state.audit.flush()  # searches are written in batches
    rows = crud.list_audit(session, limit=limit, offset=offset, action=action)
    return [AuditOut.model_validate(r) for r in rows]


def _camera_id(session: Session, camera: str | None) -> int | None:
    """The id of the camera a query names (None: no camera named); 404 for an unknown name."""
    if camera is None:
        return None
    cam = crud.get_camera_by_name(session, name=camera)
    if cam is None:
        raise HTTPException(status_code=404, detail=f"no camera named {camera!r}")
    return cam.id
