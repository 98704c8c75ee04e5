"""Crop image URLs. When searches need a key, images do too: an <img> cannot send X-API-Key,
so search results carry URLs signed with an HMAC that expires soon (``sig`` and ``exp``).

The signing secret is TBPS_URL_SECRET, or else random bytes made once and kept in
``<data_dir>/url-signing.key`` (mode 0600), so that every process on the data dir shares it
and nobody can compute it from public facts. A URL that claims to live longer than
TBPS_SIGNED_URL_SECONDS is refused even when its signature is right.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path

from service.config import Settings

log = logging.getLogger(__name__)
SECRET_FILE = "url-signing.key"


def url_secret(settings: Settings) -> bytes:
    if settings.url_secret:
        return settings.url_secret.encode("utf-8")
    return _file_secret((settings.data_dir / SECRET_FILE).resolve())


@lru_cache(maxsize=8)
def _file_secret(path: Path) -> bytes:
    """Read the secret, creating it first when missing (atomically: a link that fails if
    another process made it meanwhile)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by others; made it 0600", path)
        path.chmod(0o600)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds no usable secret; delete it to make a new one")
    return secret.encode("ascii")


def _signature(settings: Settings, path: str, exp: int) -> str:
    return hmac.new(url_secret(settings), f"{path}?{exp}".encode(),
                    hashlib.sha256).hexdigest()[:32]


def crop_url(settings: Settings, crop_id: int, kind: str, *, now: float | None = None) -> str:
    """``/crops/{id}/{kind}``, signed when TBPS_SEARCH_REQUIRES_KEY is set."""
    path = f"/crops/{crop_id}/{kind}"
    if not settings.search_requires_key:
        return path
    exp = int((now or time.time()) + settings.signed_url_seconds)
    return f"{path}?exp={exp}&sig={_signature(settings, path, exp)}"


def valid_signature(settings: Settings, path: str, exp: int | None, sig: str | None) -> bool:
    """Right signature, not expired, and not claiming a longer life than URLs are given."""
    now = time.time()
    if exp is None or sig is None or not now <= exp <= now + settings.signed_url_seconds + 5:
        return False
    return hmac.compare_digest(_signature(settings, path, exp), sig)
