from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError

from service import crud, persons
from service.config import Settings
from service.deps import Actor, EngineDep, JsonBody, SearcherDep, SessionDep, SettingsDep
from service.schemas import (
    CameraInfo,
    ErrorResponse,
    PersonHit,
    PersonSightings,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Sighting,
)
from service.search import BadCursor, CursorExpired, Hit, IndexNotReady, SearchQuery, UnknownCamera
from service.urls import crop_url

router = APIRouter(tags=["search"])


def hit_out(hit: Hit, settings: Settings) -> SearchHit:
    return SearchHit(crop_id=hit.crop_id, score=hit.score, camera=hit.camera,
                     captured_at=hit.captured_at, person_id=hit.person_id, width=hit.width,
                     height=hit.height, image_url=crop_url(settings, hit.crop_id, "image"),
                     thumbnail_url=crop_url(settings, hit.crop_id, "thumbnail"), parts=hit.parts,
                     file_name=hit.file_name)


def audited(settings: Settings, actor: Actor) -> bool:
    """TBPS_AUDIT_SEARCHES: all, only searches made with a key (the default), or none."""
    return settings.audit_searches == "all" or (settings.audit_searches == "keyed"
                                                and actor.admin)


@router.post("/search", response_model=SearchResponse, dependencies=[JsonBody],
             responses={400: {"model": ErrorResponse, "description": "Bad cursor, or a body "
                              "that could not be parsed"},
                        415: {"model": ErrorResponse, "description": "The body is not sent as "
                              "application/json"},
                        401: {"model": ErrorResponse, "description": "Key required"},
                        403: {"model": ErrorResponse, "description": "Key not valid"},
                        409: {"model": ErrorResponse, "description": "Cursor from an older index"},
                        503: {"model": ErrorResponse, "description": "No usable index yet, or "
                              "the index backend (Milvus) is unreachable"}})
def search(body: SearchRequest, request: Request, session: SessionDep, engine: EngineDep,
           settings: SettingsDep, actor: SearcherDep) -> SearchResponse:
    """Rank the gallery's crops (or persons) by how well they match the description.

    Filters are exact; pages follow `next_cursor`. A key is needed only when the service is
    configured so (TBPS_SEARCH_REQUIRES_KEY)."""
    query = SearchQuery(description=body.description, top_k=body.top_k,
                        cameras=tuple(body.cameras) if body.cameras is not None else None,
                        time_from=body.time_from, time_to=body.time_to, group_by=body.group_by,
                        cursor=body.cursor)
    try:
        result = engine.search(session, query)
    except IndexNotReady as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    except CursorExpired as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except BadCursor as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except UnknownCamera as exc:  # a validation error like the schema's own (detail + message)
        raise RequestValidationError([{"loc": ("body", "cameras"), "msg": str(exc),
                                       "type": "value_error"}]) from None
    request.app.state.metrics.search_seconds.observe(result.took_ms / 1000)
    if audited(settings, actor):
        detail = body.model_dump(mode="json", exclude_none=True, exclude={"cursor"})
        detail["hits"] = len(result.hits) or len(result.persons)
        request.app.state.audit.record(actor=actor.name, action="search", detail=detail,
                                       client=actor.client)
    persons = [PersonHit(person_id=p.person_id, score=p.score,
                         crops=[hit_out(h, settings) for h in p.crops], first_seen=p.first_seen,
                         last_seen=p.last_seen, crop_count=p.crop_count) for p in result.persons]
    return SearchResponse(query=body.description, index_version=result.index_version,
                          took_ms=round(result.took_ms, 2), group_by=body.group_by,
                          matching=result.matching, score_max=engine.score_max,
                          hits=[hit_out(h, settings) for h in result.hits],
                          persons=persons, next_cursor=result.next_cursor)


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
