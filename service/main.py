"""The FastAPI application."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError, ProgrammingError

from indexer.backends import BackendUnavailable
from indexer.backends.faiss_gpu import limit_threads
from models.factory import load_encoder
from service import __version__
from service.api.admission import Admission
from service.api.errors import CatchAll, on_backend_unavailable, on_database_error, on_storage_error
from service.api.gate import AdminGate
from service.api.limits import BodySizeLimit
from service.api.methods import HeadAsGet, on_method_not_allowed
from service.api.metrics import Metrics, MetricsMiddleware
from service.api.openapi import describe
from service.api.routes import admin, crops, health, search
from service.config import Settings, get_settings
from service.jobs.index_backend import backend_from_settings
from service.jobs.supervisor import WorkerSupervisor
from service.search.confidence import calibration_path, load_confidence
from service.search.engine import SearchEngine
from service.store import db
from service.store.audit import AuditBuffer, PerClientRate
from service.store.keys import KeyRing
from service.store.storage import StorageError

WEB_DIR = Path(__file__).resolve().parent / "web"
# bodies up to TBPS_MAX_REQUEST_BYTES (images); every other route takes small JSON bodies
UPLOAD_PATHS = frozenset({"/admin/crops", "/search/image"})
log = logging.getLogger(__name__)


def _json_problem(err: dict, body: object) -> str:
    """Where and what in a body that is not JSON: ``Expecting ',' delimiter at line 2,
    column 5 (character 35)`` (the parser gives a character offset into the body)."""
    what, pos = err.get("ctx", {}).get("error", "invalid JSON"), err["loc"][-1]
    if not isinstance(body, str) or not isinstance(pos, int):
        return f"the body is not valid JSON: {what}"
    line = body.count("\n", 0, pos) + 1
    column = pos - body.rfind("\n", 0, pos)
    return f"the body is not valid JSON: {what} at line {line}, column {column} (character {pos})"


def _readable(exc: RequestValidationError) -> list[dict]:
    """The problems as loc, msg and type; a JSON syntax error's msg says where and what."""
    errors = []
    for err in exc.errors():
        msg = (_json_problem(err, exc.body) if err.get("type") == "json_invalid"
               else err.get("msg", "invalid"))
        errors.append({"loc": err.get("loc", ()), "msg": msg, "type": err.get("type")})
    return errors


def _validation_message(errors: list[dict]) -> str:
    """One readable sentence per problem: where it is and what to fix."""
    parts = []
    for err in errors:
        if err["type"] == "json_invalid":
            parts.append(err["msg"])
            continue
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _readable(exc)
    return JSONResponse(status_code=422,
                        content={"detail": errors, "message": _validation_message(errors)})


def _start_serving(app: FastAPI, settings: Settings, encoder) -> None:
    """The model, the live index (when there is one) and the audit writer."""
    # no graphs exported yet (a first start): torch answers until they are, in the background
    enc = encoder or load_encoder(**settings.encoder_options, background_export=True)
    confidence = load_confidence(calibration_path(settings.checkpoint, settings.calibration),
                                 enc.spec)
    app.state.engine = SearchEngine(enc, backend_from_settings(settings, for_search=True),
                                    settings.data_dir, batch_max=settings.search_batch_max,
                                    batch_window_ms=settings.search_batch_window_ms,
                                    confidence=confidence)
    _, refused = app.state.engine.serving()  # loads the live index now, not on a search
    if refused:
        log.error("the live index is not served: %s (see /readyz)", refused)
    app.state.audit = AuditBuffer(settings.resolved_database_url).start()


def _freeze_startup_heap() -> bool:
    """Everything start-up loaded (torch, the towers, the index, the ORM: ~580k objects) lives
    as long as the process; freezing it keeps the periodic full collection from re-scanning it.
    Unfrozen, each such collection stopped the process for ~300 ms (twice in 1,000 requests
    from 16 clients): p99 391 ms against 102 ms frozen (docs/results.md). -> whether this app
    froze it (and unfreezes it at shutdown).

    A heap that is frozen already belongs to whoever froze it (a pre-fork server that freezes
    before forking, as the ``gc.freeze`` docs advise; the test session, which starts hundreds of
    apps and would pay a full collection of ~0.4 s CPU at each): it is left as it is."""
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


def create_app(settings: Settings | None = None, encoder=None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.ensure_dirs()
        limit_threads(settings.api_threads)
        # the routes' blocking work: a thread per admitted request and a reserve (Admission)
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        worker = WorkerSupervisor().start() if settings.spawn_worker else None
        app.state.worker = worker
        try:
            _start_serving(app, settings, encoder)
        except BaseException:
            if worker is not None:  # a failed start leaves no worker behind
                worker.stop()
            raise
        freezes = _freeze_startup_heap()
        try:
            yield
        finally:
            if freezes:  # what dies now is collected (several apps in one process: tests)
                gc.unfreeze()
            app.state.audit.close()
            app.state.engine.close()
            if worker is not None:
                worker.stop()

    app = FastAPI(title="tbps", version=__version__, lifespan=lifespan,
                  description="Text-based person search: describe a person, get ranked crops. "
                  "Admin endpoints need an API key in the `X-API-Key` header.")
    app.state.settings = settings
    db.configure(settings.resolved_database_url, settings.database_limits)
    app.state.metrics = Metrics()
    app.state.keys = KeyRing(settings.admin_key_digests)
    app.state.denied_audit_rate = PerClientRate(settings.denied_audit_per_minute)
    app.add_middleware(HeadAsGet)  # innermost: the routes see a GET, the metrics HEAD
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_json_request_bytes,
                       upload_bytes=settings.max_request_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(AdminGate)  # outside the body limit: no key, nothing is read
    app.add_middleware(Admission, limit=settings.max_concurrent_requests,  # before the gate's
                       queue=settings.admission_queue,  # key lookup, which uses the database
                       wait_s=settings.admission_wait_seconds)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(CatchAll)  # added last: outermost, so it sees every error
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(405, on_method_not_allowed)
    app.add_exception_handler(StorageError, on_storage_error)
    app.add_exception_handler(OperationalError, on_database_error)
    app.add_exception_handler(ProgrammingError, on_database_error)  # PostgreSQL: no table
    app.add_exception_handler(BackendUnavailable, on_backend_unavailable)
    for module in (health, search, crops, admin):
        app.include_router(module.router)
    describe(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> FileResponse:
        return FileResponse(WEB_DIR / "admin.html")

    return app
