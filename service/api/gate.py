"""Admin requests are authenticated before their body is read: an unauthenticated client
cannot make the server spool a large upload to disk. Refusals are audited."""

from __future__ import annotations

import json

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import database_problem, database_unavailable
from service.store.db import session_scope

MISSING = "send an admin API key in X-API-Key"
INVALID = "this API key is not valid"
SEVERAL = "send one X-API-Key header, not several"


class AdminGate:
    """401 (no key) or 403 (unknown key) for ``/admin/...`` before the app reads anything;
    the routes check the key again (their dependency names the actor). Two X-API-Key headers
    are a 400 on every path."""

    def __init__(self, app: ASGIApp, prefix: str = "/admin/") -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _key_headers(scope) > 1:  # the gate and a route
            await _refuse(send, 400, SEVERAL)  # could each read another one
            return
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        key = dict(scope["headers"]).get(b"x-api-key", b"").decode("latin-1")
        try:
            known = bool(key) and await run_in_threadpool(_owner, state, key) is not None
        except DBAPIError as exc:  # not migrated, locked, down, disk full
            if not database_unavailable(exc):
                raise
            await _refuse(send, *database_problem(exc))
            return
        if known:
            await self.app(scope, receive, send)
            return
        record_denied(state, scope, 403 if key else 401)
        await _refuse(send, 403 if key else 401, INVALID if key else MISSING)


def _key_headers(scope: Scope) -> int:
    return sum(name == b"x-api-key" for name, _ in scope["headers"])


def _owner(state, key: str) -> str | None:
    with session_scope(state.settings.resolved_database_url) as session:
        return state.keys.owner(session, key)


def record_denied(state, scope: Scope, status: int) -> None:
    """An audit entry for a refused key: which path, which client, no key material. Over
    TBPS_DENIED_AUDIT_PER_MINUTE for the client, only counted (a metric)."""
    audit = getattr(state, "audit", None)
    if audit is None:
        return
    client = client_of(scope)
    if not state.denied_audit_rate.allow(client):
        state.metrics.denied_unaudited.inc()
        return
    audit.record(actor="anonymous", action="auth.denied", target=scope["path"][:256],
                 detail={"status": status, "method": scope.get("method")}, client=client)


def client_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"ApiKey"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
