"""Admin API keys: sha256 digests only, compared in constant time."""

from __future__ import annotations

import hmac
import threading
import time

from sqlalchemy.orm import Session

from service.config import hash_key
from service.store import crud

DB_KEYS_TTL_S = 10.0  # keys made or revoked with the CLI take effect within this time


class KeyRing:
    """The environment's key digests plus the database's, re-read every ``ttl`` seconds, so that
    an authenticated search costs no extra query."""

    def __init__(self, env_digests: frozenset[str], ttl: float = DB_KEYS_TTL_S) -> None:
        # names say which key without revealing any of its digest
        self._env = {d: f"env-key-{i}" for i, d in enumerate(sorted(env_digests), 1)}
        self._db: dict[str, str] = {}
        self._loaded, self._ttl = float("-inf"), ttl
        self._lock = threading.Lock()

    def owner(self, session: Session, key: str) -> str | None:
        """The key's name, or None. Every known digest is compared: no early exit."""
        digest = hash_key(key)
        found = None
        for candidate, name in {**self._env, **self._db_keys(session)}.items():
            if hmac.compare_digest(candidate, digest):
                found = name
        return found

    def _db_keys(self, session: Session) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._loaded > self._ttl:
                self._db, self._loaded = crud.active_key_digests(session), time.monotonic()
            return self._db
