"""Admin endpoints: every one needs an admin API key in X-API-Key and is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from indexer.spec import FACTORY_PATTERN
from service import admin, crud
from service.deps import AdminDep, EngineDep, JsonBody, SessionDep, SettingsDep
from service.index_backend import index_spec_problem
from service.schemas import (
    BACKEND_DOWN,
    BAD_BODY,
    JSON_BODY,
    STORAGE_ERRORS,
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
    captured_at: Annotated[UTCDateTime, Form(description="When the crops were captured "
                                             "(ISO 8601)", examples=["2026-05-01T12:30:00Z"])],
    person_id: Annotated[Label | None, Form(description="Person/track id (no control "
                                            "characters)", examples=["track-0017"])] = None,
) -> UploadResponse | JSONResponse:
    """Add crops. Each file is checked by content, size and pixels; duplicates are found by
    content hash. Good files are kept even when others in the batch are refused; an `add` job
    makes them searchable without a full reindex."""
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


@router.delete("/crops/{crop_id}", response_model=DeleteResponse,
               responses={**_not_found("crop"), **STORAGE_ERRORS})
def delete_crop(session: SessionDep, settings: SettingsDep, actor: AdminDep,
                crop_id: int = Path(..., ge=1, le=2**62, examples=[42])) -> DeleteResponse:
    """Delete one crop: gone from search results at once, its file removed."""
    crop = crud.get_crop(session, crop_id=crop_id)
    if crop is None or crop.status.value == "deleted":
        raise HTTPException(status_code=404, detail=f"no crop with id {crop_id}")
    ids = admin.delete_crops(session, settings, [crop])
    crud.add_audit(session, actor=actor.name, action="crops.delete", target=f"crop:{crop_id}",
                   client=actor.client)
    session.commit()
    admin.after_change(settings, deleted=ids)
    return DeleteResponse(deleted=len(ids), crop_ids=ids)


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
    camera_id = None
    if camera is not None:
        cam = crud.get_camera_by_name(session, name=camera)
        if cam is None:
            raise HTTPException(status_code=404, detail=f"no camera named {camera!r}")
        camera_id = cam.id
    crops = crud.crops_to_delete(session, camera_id=camera_id, time_from=time_from,
                                 time_to=time_to)
    ids = admin.delete_crops(session, settings, crops)
    crud.add_audit(session, actor=actor.name, action="crops.delete_range",
                   target=f"camera:{camera}" if camera else None, client=actor.client,
                   detail={"time_from": time_from.isoformat() if time_from else None,
                           "time_to": time_to.isoformat() if time_to else None,
                           "deleted": len(ids)})
    session.commit()
    admin.after_change(settings, deleted=ids)
    return DeleteResponse(deleted=len(ids), crop_ids=ids)


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
    try:
        job = crud.create_job(session, kind="reindex", params=params, created_by=actor.name)
    except crud.JobConflict as exc:
        active = f" (job {exc.job.id}, {exc.job.status.value})" if exc.job else ""
        raise HTTPException(status_code=409,
                            detail=f"a reindex is already queued or running{active}") from None
    crud.add_audit(session, actor=actor.name, action="reindex", target=f"job:{job.id}",
                   detail=params or None, client=actor.client)
    session.commit()
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
    cam = crud.create_camera(session, name=body.name, description=body.description)
    crud.add_audit(session, actor=actor.name, action="cameras.create", target=f"camera:{cam.id}",
                   detail={"name": body.name}, client=actor.client)
    session.commit()
    admin.after_change(settings)
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
    cam.name = body.name
    if body.description is not None:
        cam.description = body.description
    try:
        session.flush()
    except IntegrityError:
        raise HTTPException(status_code=409,
                            detail=f"a camera named {body.name!r} exists") from None
    crud.add_audit(session, actor=actor.name, action="cameras.rename", target=f"camera:{cam.id}",
                   detail={"from": old, "to": body.name}, client=actor.client)
    session.commit()
    admin.after_change(settings)
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
