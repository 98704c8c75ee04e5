from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from indexer.backends import BackendUnavailable
from service.api.deps import (
    EngineDep,
    OptionalKey,
    SearcherDep,
    SessionDep,
    SettingsDep,
    require_admin,
)
from service.api.health import ready_problem
from service.api.schemas import (
    BACKEND_DOWN,
    ErrorResponse,
    GalleryStatus,
    Health,
    IndexingOut,
    Readiness,
)
from service.jobs.indexing import IndexingState, describe, gallery_state
from service.search.engine import IndexNotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:  # async: no request thread, no database, never waits on either
    """The process is up."""
    return Health(status="ok")


def indexing_out(state: IndexingState | None) -> IndexingOut | None:
    if state is None:
        return None
    return IndexingOut(job_id=state.job_id, kind=state.kind, status=state.status,
                       done=state.done, total=state.total, eta_s=state.eta_s,
                       progress=min(max(state.progress, 0.0), 1.0),
                       more_queued=state.more_queued, summary=describe(state))


def _not_ready(model: str, reason: str, indexing: IndexingOut | None = None) -> JSONResponse:
    body = Readiness(status="not ready", model=model, reason=reason, indexing=indexing)
    return JSONResponse(status_code=503, content=body.model_dump(mode="json"))


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Database not migrated, model "
                             "or index not loaded (none built, or the live one corrupt or "
                             "deleted with no sound previous one), the index backend "
                             "unreachable, or the job queue stuck"}})
def readyz(engine: EngineDep, session: SessionDep,
           settings: SettingsDep) -> Readiness | JSONResponse:
    """Ready to search: the database is migrated, the model is loaded, an index built with it
    is live (while the first index builds, as soon as its first crops are; `indexing` says how
    far it is) and the job queue moves (no job held by a dead worker, none waiting with
    nothing running). A live index that is corrupt or whose folder is gone is not served:
    not ready, unless the previous version is sound and serves instead (`reason` says so)."""
    model = engine.encoder.spec.name
    problem = ready_problem(settings)
    if problem:
        return _not_ready(model, problem)
    indexing = gallery_state(session).indexing
    try:
        live = engine.check_ready()
    except (IndexNotReady, BackendUnavailable) as exc:  # no index yet; Milvus lost
        reason = f"{describe(indexing)}; {exc}" if indexing else str(exc)
        return _not_ready(model, reason, indexing_out(indexing))
    return Readiness(status="ready", model=model, index_version=live.version,
                     index_count=live.count, reason=engine.serving()[1],
                     indexing=indexing_out(indexing))


@router.get("/status", response_model=GalleryStatus,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                       **BACKEND_DOWN})
def status(engine: EngineDep, session: SessionDep, _actor: SearcherDep) -> GalleryStatus:
    """The gallery's crops by status, what the live index holds, and the index job in
    progress (n of N crops, ETA): what the search page shows while the first index builds."""
    state = gallery_state(session)
    live = engine.live_index()
    return GalleryStatus(crops=state.crops, indexed=state.indexed, pending=state.pending,
                         failed=state.failed, searchable=live.count if live else 0,
                         index_version=live.version if live else None,
                         indexing=indexing_out(state.indexing))


def metrics_access(request: Request, settings: SettingsDep, session: SessionDep,
                   key: OptionalKey = None) -> None:
    """TBPS_METRICS_ACCESS: public, an admin key, or off (404)."""
    access = settings.resolved_metrics_access
    if access == "off":
        raise HTTPException(status_code=404, detail="metrics are off (TBPS_METRICS_ACCESS)")
    if access == "key":
        require_admin(request, settings, session, key)


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       401: {"model": ErrorResponse, "description": "Key needed "
                             "(TBPS_METRICS_ACCESS=key)"},
                       403: {"model": ErrorResponse, "description": "Key not valid"},
                       404: {"model": ErrorResponse, "description": "Metrics are off"},
                       **BACKEND_DOWN})
def metrics(request: Request, engine: EngineDep) -> Response:
    """Request counts and latencies, search latency, index size (Prometheus text format)."""
    m = request.app.state.metrics
    live = engine.live_index()
    m.index_vectors.set(live.count if live else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
