"""Admission control: a bounded queue in front of the work that uses the database.

At most ``limit`` requests are inside the app at once, and at most ``queue`` more wait for a
place (each for at most ``wait_s``); a request beyond them, or one that waited too long, gets a
503 with ``Retry-After`` at once instead of a thread that blocks on a pool connection. The
settings size the database pool and the request thread pool from the same ``limit``
(``Settings.database_limits``, ``Settings.request_threads``), so that an admitted request
never waits for a connection or a thread. Routes that never touch the database (``exempt``:
/healthz, the pages, static files, /metrics) pass straight through.
"""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_S = 2
EXEMPT_PATHS = frozenset({"/healthz", "/", "/admin", "/favicon.ico", "/metrics", "/docs",
                          "/redoc", "/openapi.json"})
EXEMPT_PREFIXES = ("/static/",)


def exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


class Admission:
    """``limit`` requests in, ``queue`` waiting at most ``wait_s``; the rest 503 at once."""

    def __init__(self, app: ASGIApp, *, limit: int, queue: int, wait_s: float) -> None:
        self.app, self.limit, self.queue, self.wait_s = app, limit, queue, wait_s
        self.inside = self.waiting = 0
        self._places: anyio.Semaphore | None = None  # made in the event loop, on first use
        self.refused = 0  # for the tests and the log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self._places is None:
            self._places = anyio.Semaphore(self.limit)
        if not await self._enter(self._places):
            self.refused += 1
            await _busy(send, self.inside, self.waiting)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.inside -= 1
            self._places.release()

    async def _enter(self, places: anyio.Semaphore) -> bool:
        """Take a place: at once when one is free, else after waiting in the queue."""
        if places.value == 0 and self.waiting >= self.queue:
            return False
        self.waiting += 1
        try:
            with anyio.move_on_after(self.wait_s):
                await places.acquire()
                self.inside += 1
                return True
            return False
        finally:
            self.waiting -= 1


async def _busy(send: Send, inside: int, waiting: int) -> None:
    body = json.dumps({"detail": f"the service is busy ({inside} requests in progress, "
                       f"{waiting} waiting); try again in {RETRY_AFTER_S} s"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})
