"""HTTP methods the routes do not declare themselves: HEAD is answered as GET without the body
(FastAPI routes declare GET only), and a 405 names every method of the path in ``Allow``
(Starlette names those of the one route it matched)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """A HEAD request runs its path's GET route; the status and headers are sent, the body
    is not (Content-Length stays the GET's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] in ("http.response.body", "http.response.pathsend"):
                message = {"type": "http.response.body", "body": b"",
                           "more_body": message.get("more_body", False)}
            await send(message)

        # a copy: the server still sees HEAD in its own scope and sends no body either
        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, headers_only)
        finally:  # the route matched, for the metrics outside
            if "route" in inner:
                scope["route"] = inner["route"]


def path_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (HEAD with GET)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):  # included routers' routes too
        if route.path and route.methods and compile_path(route.path)[0].match(request.url.path):
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def on_method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    methods = path_methods(request)
    allow = ", ".join(methods) if methods else (exc.headers or {}).get("Allow", "")
    return JSONResponse(status_code=405, headers={"Allow": allow},
                        content={"detail": f"method not allowed on {request.url.path}; "
                                 f"use {allow or 'another path'}"})
