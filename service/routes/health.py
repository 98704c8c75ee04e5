from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import (
    EngineDep,
    OptionalKey,
    SessionDep,
    SettingsDep,
    require_admin,
)
from service.health import ready_problem
from service.schemas import ErrorResponse, Health, Readiness
from service.search import IndexNotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


def _not_ready(model: str, reason: str) -> JSONResponse:
    body = Readiness(status="not ready", model=model, reason=reason)
    return JSONResponse(status_code=503, content=body.model_dump(mode="json"))


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Database not migrated, model "
                             "or index not loaded, or the job queue stuck"}})
def readyz(engine: EngineDep, settings: SettingsDep) -> Readiness | JSONResponse:
    """Ready: the database is migrated, the model is loaded, an index built with it is live and
    the job queue moves (no job held by a dead worker, none waiting with nothing running)."""
    model = engine.encoder.spec.name
    problem = ready_problem(settings)
    if problem:
        return _not_ready(model, problem)
    try:
        live = engine.check_ready()
    except IndexNotReady as exc:
        return _not_ready(model, str(exc))
    return Readiness(status="ready", model=model, index_version=live.version,
                     index_count=live.count)


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
                       404: {"model": ErrorResponse, "description": "Metrics are off"}})
def metrics(request: Request, engine: EngineDep) -> Response:
    """Request counts and latencies, search latency, index size (Prometheus text format)."""
    m = request.app.state.metrics
    live = engine.live_index()
    m.index_vectors.set(live.count if live else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
