from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import EngineDep
from service.schemas import Health, Readiness
from service.search import IndexNotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Model or index not loaded"}})
def readyz(engine: EngineDep) -> Readiness | JSONResponse:
    """Ready to search: the model is loaded and an index built with it is live."""
    model = engine.encoder.spec.name
    try:
        live = engine.check_ready()
    except IndexNotReady as exc:
        body = Readiness(status="not ready", model=model, reason=str(exc))
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return Readiness(status="ready", model=model, index_version=live.version,
                     index_count=live.count)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
def metrics(request: Request, engine: EngineDep) -> Response:
    """Request counts and latencies, search latency, index size (Prometheus text format)."""
    m = request.app.state.metrics
    live = engine.live_index()
    m.index_vectors.set(live.count if live else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
