from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.api.deps import Actor, EngineDep, JsonBody, SearcherDep, SessionDep, SettingsDep
from service.api.schemas import (
    MAX_DESCRIPTION,
    CameraInfo,
    CameraSpan,
    CropSighting,
    CropSightings,
    ErrorResponse,
    PersonHit,
    PersonSightings,
    SearchHit,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    Sighting,
)
from service.config import Settings
from service.search import persons, sightings
from service.search.engine import (
    BadCursor,
    CursorExpired,
    Hit,
    IndexNotReady,
    SearchQuery,
    UnknownExamples,
)
from service.search.filters import FILTERS, FilterRejected
from service.search.urls import crop_url
from service.store import crud
from service.store.storage import ImageRejected, check_image

router = APIRouter(tags=["search"])


def hit_out(hit: Hit, settings: Settings) -> SearchHit:
    return SearchHit(crop_id=hit.crop_id, score=hit.score, camera=hit.camera,
                     captured_at=hit.captured_at, person_id=hit.person_id, width=hit.width,
                     height=hit.height, image_url=crop_url(settings, hit.crop_id, "image"),
                     thumbnail_url=crop_url(settings, hit.crop_id, "thumbnail"), parts=hit.parts,
                     file_name=hit.file_name, confidence=hit.confidence, match=hit.match)


def audited(settings: Settings, actor: Actor) -> bool:
    """TBPS_AUDIT_SEARCHES: all, only searches made with a key (the default), or none."""
    return settings.audit_searches == "all" or (settings.audit_searches == "keyed"
                                                and actor.admin)


SEARCH_ERRORS: dict[int | str, dict] = {
    400: {"model": ErrorResponse, "description": "Bad cursor, or a body that could not be "
          "parsed"},
    401: {"model": ErrorResponse, "description": "Key required"},
    403: {"model": ErrorResponse, "description": "Key not valid"},
    409: {"model": ErrorResponse, "description": "Cursor from an older index"},
    503: {"model": ErrorResponse, "description": "No usable index yet, or the index backend "
          "(Milvus) is unreachable"}}
UNKNOWN_EXAMPLES = {404: {"model": ErrorResponse, "description": "An example crop in `like` is "
                          "unknown, deleted or not indexed yet (the message names it)",
                          "content": {"application/json": {"example": {
                              "detail": "like: no crop with id 9999 (unknown or deleted); "
                                        "pick examples from search results"}}}}}
NOT_JSON = {415: {"model": ErrorResponse, "description": "The body is not sent as "
                  "application/json"}}


@router.post("/search", response_model=SearchResponse, dependencies=[JsonBody],
             responses={**SEARCH_ERRORS, **NOT_JSON, **UNKNOWN_EXAMPLES})
def search(body: SearchRequest, request: Request, session: SessionDep, engine: EngineDep,
           settings: SettingsDep, actor: SearcherDep) -> SearchResponse:
    """Rank the gallery's crops (or persons) by how well they match the description, the
    example crops in `like` (more like these: the examples themselves are left out), or both.

    Filters are exact; pages follow `next_cursor`. A key is needed only when the service is
    configured so (TBPS_SEARCH_REQUIRES_KEY)."""
    query = _query(body, like=tuple(body.like) if body.like is not None else None)
    return _answer(request, session, engine, settings, actor, query, _detail(body))


def _detail(options: SearchOptions) -> dict[str, Any]:
    """The request as the audit log keeps it: the fields given, without the cursor."""
    return options.model_dump(mode="json", exclude_none=True,
                              exclude={"cursor", *(() if options.exclude else ("exclude",))})


def _filter_form() -> Callable[..., dict[str, Any]]:
    """A dependency taking every filter's fields (``service.search.filters.FILTERS``) as form fields
    (a list field: repeat it), documented as the JSON fields are; -> the ones given."""
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[spec.form_type(name), Form(
                                    description=info.description, examples=info.examples)])
              for spec in FILTERS for name, (_, info) in spec.fields.items()]

    def given(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    given.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return given


FilterForm = Annotated[dict[str, Any], Depends(_filter_form())]


@router.post("/search/image", response_model=SearchResponse, responses={
    **SEARCH_ERRORS, 413: {"model": ErrorResponse, "description": "The photo is larger than "
                           "TBPS_MAX_UPLOAD_BYTES"},
    422: {"description": "Not an image tbps accepts (the message says why), or a form field "
          "that is not valid"}})
def search_image(
    request: Request, session: SessionDep, engine: EngineDep, settings: SettingsDep,
    actor: SearcherDep,
    image: Annotated[UploadFile, File(description="A photo of the person (JPEG, PNG, BMP or "
                                      "WebP, within the upload limits); encoded, never stored")],
    filters: FilterForm,
    description: Annotated[str | None, Form(min_length=1, max_length=MAX_DESCRIPTION,
                                            examples=["carrying a black backpack"])] = None,
    text_weight: Annotated[float | None, Form(ge=0, le=1, examples=[0.5])] = None,
    top_k: Annotated[int | None, Form(ge=1, le=100, examples=[10])] = None,
    group_by: Annotated[Literal["crop", "person"] | None, Form(examples=["crop"])] = None,
    cursor: Annotated[str | None, Form(max_length=2048, examples=[None])] = None,
    exclude: Annotated[list[int] | None, Form(description="Dismissed crop ids (repeat the "
                                              "field), as for `POST /search`")] = None,
) -> SearchResponse:
    """Rank the gallery by how well it matches a photo the operator holds (one not in the
    gallery), optionally with a description: the photo goes through the image tower and is
    never stored. The form fields mean what they mean for `POST /search`; same response."""
    fields = {"description": description, "text_weight": text_weight, "top_k": top_k,
              **filters, "group_by": group_by, "cursor": cursor, "exclude": exclude}
    try:
        options = SearchOptions.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False,
                                                          include_context=False)]) from None
    data = image.file.read(settings.max_upload_bytes + 1)
    try:
        checked = check_image(data, max_bytes=settings.max_upload_bytes,
                              max_pixels=settings.max_image_pixels)
    except ImageRejected as exc:
        status = 413 if len(data) > settings.max_upload_bytes else 422
        raise HTTPException(status_code=status, detail=f"image: {exc}") from None
    query = _query(options, image=checked.data)
    detail = _detail(options)
    detail["image"] = {"sha256": checked.sha256[:16], "bytes": len(checked.data)}
    return _answer(request, session, engine, settings, actor, query, detail)


def _query(options: SearchOptions, **by: Any) -> SearchQuery:
    return SearchQuery(description=options.description, top_k=options.top_k,
                       filters=options.filter_values(), group_by=options.group_by,
                       cursor=options.cursor, exclude=tuple(options.exclude),
                       text_weight=options.text_weight, **by)


def _answer(request: Request, session: SessionDep, engine: EngineDep, settings: Settings,
            actor: Actor, query: SearchQuery, detail: dict) -> SearchResponse:
    """Run the search, map its refusals to HTTP, audit it, shape the response."""
    try:
        result = engine.search(session, query)
    except IndexNotReady as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    except CursorExpired as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except BadCursor as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except UnknownExamples as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except FilterRejected as exc:  # a validation error like the schema's own (detail + message)
        raise RequestValidationError([{"loc": ("body", exc.field), "msg": str(exc),
                                       "type": "value_error"}]) from None
    request.app.state.metrics.search_seconds.observe(result.took_ms / 1000)
    if audited(settings, actor):
        detail["hits"] = len(result.hits) or len(result.persons)
        request.app.state.audit.record(actor=actor.name, action="search", detail=detail,
                                       client=actor.client)
    persons = [PersonHit(person_id=p.person_id, score=p.score,
                         crops=[hit_out(h, settings) for h in p.crops], first_seen=p.first_seen,
                         last_seen=p.last_seen, crop_count=p.crop_count,
                         confidence=p.confidence, match=p.match) for p in result.persons]
    return SearchResponse(query=query.description,
                          like=list(query.like) if query.like is not None else None,
                          index_version=result.index_version,
                          took_ms=round(result.took_ms, 2), group_by=query.group_by,
                          matching=result.matching, score_max=engine.score_max,
                          hits=[hit_out(h, settings) for h in result.hits],
                          persons=persons, next_cursor=result.next_cursor,
                          good_matches=result.good_matches, best_match=result.best_match)


@router.get("/cameras", response_model=list[str],
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def camera_names(session: SessionDep, _actor: SearcherDep) -> list[str]:
    """Camera names, for the search filter."""
    return [cam.name for cam, _ in crud.cameras_with_counts(session)]


@router.get("/cameras/info", response_model=list[CameraInfo],
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def camera_info(session: SessionDep, _actor: SearcherDep) -> list[CameraInfo]:
    """Cameras with their description and crop count (the demo's are dataset folders)."""
    return [CameraInfo(name=cam.name, description=cam.description, crop_count=n)
            for cam, n in crud.cameras_with_counts(session)]


PersonId = Annotated[str, Path(min_length=1, max_length=128, examples=["track-0017"])]


@router.get("/persons/{person_id}/sightings", response_model=PersonSightings,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                       404: {"model": ErrorResponse}})
def person_sightings(person_id: PersonId, session: SessionDep, settings: SettingsDep,
                     _actor: SearcherDep) -> PersonSightings:
    """Every crop of this person/track id in capture-time order (at most 500)."""
    crops = persons.sightings(session, person_id=person_id, limit=persons.MAX_SIGHTINGS + 1)
    if not crops:
        raise HTTPException(status_code=404, detail=f"no crops of person {person_id!r}")
    shown = crops[: persons.MAX_SIGHTINGS]
    return PersonSightings(person_id=person_id, truncated=len(crops) > len(shown), sightings=[
        Sighting(crop_id=c.id, camera=c.camera.name if c.camera else None,
                 captured_at=c.captured_at, file_name=c.original_name,
                 image_url=crop_url(settings, c.id, "image"),
                 thumbnail_url=crop_url(settings, c.id, "thumbnail")) for c in shown])


@router.get("/crops/{crop_id}/sightings", response_model=CropSightings, responses={
    401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    404: {"model": ErrorResponse, "description": "No such crop (unknown or deleted), or not in "
          "the live index yet"},
    503: {"model": ErrorResponse, "description": "No usable index yet"}})
def crop_sightings(crop_id: Annotated[int, Path(ge=1, le=2**62, examples=[42])],
                   session: SessionDep, engine: EngineDep, settings: SettingsDep,
                   _actor: SearcherDep) -> CropSightings:
    """Sightings of the person in this crop, with or without person ids: the crops its search
    by example scores at or above the same-person threshold (chosen on dev for a stated
    precision), and those with its person/track id; in capture-time order, camera by camera
    (at most 500)."""
    try:
        found = sightings.crop_sightings(session, engine, crop_id=crop_id)
    except sightings.UnknownCrop as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except IndexNotReady as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return CropSightings(
        crop_id=found.crop_id, person_id=found.person_id, threshold=found.threshold,
        precision=found.precision, recall=found.recall, truncated=found.truncated,
        cameras=[CameraSpan(**vars(c)) for c in found.cameras],
        sightings=[CropSighting(crop_id=s.crop_id, camera=s.camera, captured_at=s.captured_at,
                                file_name=s.file_name, confidence=s.confidence, by=s.by,
                                image_url=crop_url(settings, s.crop_id, "image"),
                                thumbnail_url=crop_url(settings, s.crop_id, "thumbnail"))
                   for s in found.sightings])
