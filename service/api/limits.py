"""Request body limit, enforced before a body is parsed or spooled to disk."""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """413 for a body over its route's limit: at once from Content-Length, else while it
    streams. Upload routes (``upload_paths``) take up to ``upload_bytes``; every other route
    (a search, an admin JSON body) up to ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int | None = None,
                 upload_paths: frozenset[str] = frozenset()) -> None:
        self.app, self.max_bytes, self.upload_paths = app, max_bytes, upload_paths
        self.upload_bytes = max_bytes if upload_bytes is None else upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self.upload_paths
        limit = self.upload_bytes if upload else self.max_bytes
        detail = _detail(limit, upload)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(send, detail)
            return
        received, started = 0, False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # an HTTPException: the app answers 413 itself
                    raise HTTPException(status_code=413, detail=detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised where no handler of the app saw it
            if exc.status_code != 413 or started:
                raise
            await self._refuse(send, detail)

    async def _refuse(self, send: Send, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _detail(limit: int, upload: bool) -> str:
    if upload:
        return f"request body over {limit} bytes; send fewer or smaller files"
    return (f"request body over {limit} bytes, more than this route takes "
            "(TBPS_MAX_JSON_REQUEST_BYTES); send a smaller JSON body")
