from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import EngineDep, SearcherDep, SessionDep
from service.indexing import IndexingState, describe, gallery_state
from service.schemas import ErrorResponse, GalleryStatus, Health, IndexingOut, Readiness
from service.search import IndexNotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


def indexing_out(state: IndexingState | None) -> IndexingOut | None:
    if state is None:
        return None
    return IndexingOut(job_id=state.job_id, kind=state.kind, status=state.status,
                       done=state.done, total=state.total, eta_s=state.eta_s,
                       progress=min(max(state.progress, 0.0), 1.0),
                       more_queued=state.more_queued, summary=describe(state))


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Model or index not loaded"}})
def readyz(engine: EngineDep, session: SessionDep) -> Readiness | JSONResponse:
    """Ready to search: the model is loaded and an index built with it is live (while the
    first index builds, as soon as its first crops are; `indexing` says how far it is)."""
    model = engine.encoder.spec.name
    indexing = gallery_state(session).indexing
    try:
        live = engine.check_ready()
    except IndexNotReady as exc:
        reason = f"{describe(indexing)}; {exc}" if indexing else str(exc)
        body = Readiness(status="not ready", model=model, reason=reason,
                         indexing=indexing_out(indexing))
        return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
    return Readiness(status="ready", model=model, index_version=live.version,
                     index_count=live.count, indexing=indexing_out(indexing))


@router.get("/status", response_model=GalleryStatus,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
def status(engine: EngineDep, session: SessionDep, _actor: SearcherDep) -> GalleryStatus:
    """The gallery's crops by status, what the live index holds, and the index job in
    progress (n of N crops, ETA): what the search page shows while the first index builds."""
    state = gallery_state(session)
    live = engine.live_index()
    return GalleryStatus(crops=state.crops, indexed=state.indexed, pending=state.pending,
                         failed=state.failed, searchable=live.count if live else 0,
                         index_version=live.version if live else None,
                         indexing=indexing_out(state.indexing))


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
def metrics(request: Request, engine: EngineDep) -> Response:
    """Request counts and latencies, search latency, index size (Prometheus text format)."""
    m = request.app.state.metrics
    live = engine.live_index()
    m.index_vectors.set(live.count if live else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
