"""Typed dependencies for routes: settings, database session, search engine, API-key auth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from service.api.gate import INVALID, MISSING, record_denied
from service.config import Settings
from service.search.engine import SearchEngine
from service.store.db import session_scope

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An admin API key (TBPS_ADMIN_KEYS or `tbps create-key`)")


async def get_settings_dep(request: Request) -> Settings:  # async: no threadpool hop
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope(request.app.state.settings.resolved_database_url) as session:
        yield session


async def get_engine(request: Request) -> SearchEngine:
    return request.app.state.engine


# public endpoints read the key as a plain optional header: advertising the security scheme
# there would claim a key is needed where it is not
OptionalKey = Annotated[str | None, Header(alias="X-API-Key", description="An admin API key; "
                                           "needed only where the deployment says so")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_db)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]


@dataclass(frozen=True)
class Actor:
    """Who is calling: a key's name, or ``anonymous``; and from where."""

    name: str
    client: str | None
    admin: bool


def key_owner(request: Request, session: Session, key: str) -> str | None:
    """The name of an admin key (see ``service.store.keys``), or None."""
    return request.app.state.keys.owner(session, key)


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def deny(request: Request, status: int, detail: str) -> HTTPException:
    """The refusal to raise, audited (path and client, no key material)."""
    record_denied(request.app.state, request.scope, status)
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    return HTTPException(status_code=status, detail=detail, headers=headers)


def require_admin(request: Request, settings: SettingsDep, session: SessionDep,
                  key: Annotated[str | None, Security(api_key_header)] = None) -> Actor:
    if not key:
        raise deny(request, 401, MISSING)
    owner = key_owner(request, session, key)
    if owner is None:
        raise deny(request, 403, INVALID)
    return Actor(owner, _client(request), True)


def search_actor(request: Request, settings: SettingsDep, session: SessionDep,
                 key: OptionalKey = None) -> Actor:
    """Searches need a key only when TBPS_SEARCH_REQUIRES_KEY is set."""
    if settings.search_requires_key:
        return require_admin(request, settings, session, key)
    owner = key_owner(request, session, key) if key else None
    return Actor(owner or "anonymous", _client(request), owner is not None)


async def json_content(request: Request) -> None:
    """415 for a body sent as anything but JSON (FastAPI would not parse it: a 422 that says
    nothing of the cause); a request without a body passes."""
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return
    mime = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise HTTPException(status_code=415, detail="send the body as application/json "
                        f"(Content-Type: application/json), not {mime or 'without a type'}")


JsonBody = Depends(json_content)
AdminDep = Annotated[Actor, Depends(require_admin)]
SearcherDep = Annotated[Actor, Depends(search_actor)]
