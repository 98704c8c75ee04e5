"""Crop image URLs. When searches need a key, images do too: an <img> cannot send X-API-Key,
so search results carry URLs signed with an HMAC that expires (``sig`` and ``exp``)."""

from __future__ import annotations

import hashlib
import hmac
import time

from service.config import Settings

URL_LIFETIME_S = 3600


def _secret(settings: Settings) -> bytes:
    """The same in every process with the same keys; changing the keys expires every URL."""
    return hashlib.sha256(("tbps-image-urls:" + ",".join(sorted(settings.admin_key_digests)))
                          .encode()).digest()


def _signature(settings: Settings, path: str, exp: int) -> str:
    return hmac.new(_secret(settings), f"{path}?{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def crop_url(settings: Settings, crop_id: int, kind: str, *, now: float | None = None) -> str:
    """``/crops/{id}/{kind}``, signed when TBPS_SEARCH_REQUIRES_KEY is set."""
    path = f"/crops/{crop_id}/{kind}"
    if not settings.search_requires_key:
        return path
    exp = int((now or time.time()) + URL_LIFETIME_S)
    return f"{path}?exp={exp}&sig={_signature(settings, path, exp)}"


def valid_signature(settings: Settings, path: str, exp: int | None, sig: str | None) -> bool:
    if exp is None or sig is None or exp < time.time():
        return False
    return hmac.compare_digest(_signature(settings, path, exp), sig)
