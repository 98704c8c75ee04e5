"""Errors as JSON: storage and database trouble as 507/503 with a message, an index backend
lost after start-up (``BackendUnavailable``: Milvus down) as 503, anything unhandled
as a 500 with an error id that the log names too. Unhandled errors are answered here, not
re-raised to the server, so that the client's keep-alive connection stays usable."""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.backends import BackendUnavailable
from service.store.storage import StorageError

log = logging.getLogger(__name__)

BACKEND_RETRY_AFTER_S = 10  # a restarted Milvus answers within seconds of coming up


async def on_storage_error(_request: Request, exc: StorageError) -> JSONResponse:
    log.error("storage error: %s", exc)
    return JSONResponse(status_code=507 if exc.full else 503, content={"detail": str(exc)},
                        headers={} if exc.full else {"Retry-After": "30"})


async def on_backend_unavailable(_request: Request, exc: BackendUnavailable) -> JSONResponse:
    """Nothing was lost: the tables are as they were, and the next call after the server is
    back reconnects (no restart)."""
    log.error("index backend unavailable: %s", exc)
    return JSONResponse(status_code=503, content={"detail": str(exc)},
                        headers={"Retry-After": str(BACKEND_RETRY_AFTER_S)})


# PostgreSQL's undefined table / column (psycopg's ``sqlstate``); SQLite says it in words
MISSING_SCHEMA_STATES = frozenset({"42P01", "42703"})
NOT_MIGRATED = "the database is not migrated: run `tbps migrate`"


def schema_missing(exc: DBAPIError) -> bool:
    """A table or column the code needs is not there: a database dropped and recreated
    empty, or one never migrated (PostgreSQL raises these as ProgrammingError)."""
    if getattr(exc.orig, "sqlstate", None) in MISSING_SCHEMA_STATES:
        return True
    return any(words in str(exc.orig).lower() for words in ("no such table", "no such column"))


def database_unavailable(exc: DBAPIError) -> bool:
    """Errors answered 503/507 (``database_problem``); any other is a bug: a 500."""
    return isinstance(exc, OperationalError) or schema_missing(exc)


def database_problem(exc: DBAPIError) -> tuple[int, str]:
    """(status, message) for a database that cannot do the request, logged with an id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("database unavailable (error id %s): %s", error_id, exc.orig)
    if schema_missing(exc):
        return 503, f"{NOT_MIGRATED} (error id {error_id})"
    if "disk is full" in str(exc.orig).lower():  # SQLITE_FULL
        return 507, f"the database's disk is full (error id {error_id})"
    return 503, (f"the database is unavailable, read-only or not migrated (`tbps migrate`); "
                 f"try again (error id {error_id})")


async def on_database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
    if not database_unavailable(exc):
        raise exc  # a bug in a query: CatchAll answers 500 with an error id
    status, detail = database_problem(exc)
    return JSONResponse(status_code=status, content={"detail": detail},
                        headers={"Retry-After": "5"} if status == 503 else {})


class CatchAll:
    """The outermost app middleware: an exception that reaches it becomes a logged JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("unhandled error %s on %s %s", error_id, scope.get("method"),
                          scope.get("path"))
            if started:  # the response is half sent: nothing sensible is left to say
                raise
            await _send_500(send, error_id)


async def _send_500(send: Send, error_id: str) -> None:
    body = json.dumps({"detail": f"internal error; quote error id {error_id}",
                       "error_id": error_id}).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
