"""Signed image URLs: the secret is random and private, expiries are short."""

from __future__ import annotations

import hashlib
import hmac
import stat
import time

from fastapi.testclient import TestClient

from service.main import create_app
from service.search.urls import SECRET_FILE, crop_url, url_secret, valid_signature


def _sign(secret: bytes, path: str, exp: int) -> str:
    return hmac.new(secret, f"{path}?{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def test_a_url_signed_with_the_old_public_constant_is_refused(gallery, tiny_encoder):
    settings = gallery.model_copy(update={"search_requires_key": True})
    public = hashlib.sha256(("tbps-image-urls:" + ",".join(sorted(settings.admin_key_digests)))
                            .encode()).digest()  # what anyone could compute before
    path, far = "/crops/5/image", 1099511627775
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        assert client.get(path).status_code == 401
        assert client.get(f"{path}?exp={far}&sig={_sign(public, path, far)}").status_code == 403
        soon = int(time.time()) + 60
        assert client.get(f"{path}?exp={soon}&sig={_sign(public, path, soon)}").status_code == 403
        good = crop_url(settings, 5, "image")
        assert client.get(good).status_code == 200


def test_the_secret_is_random_private_and_shared_by_every_process(settings):
    secret = url_secret(settings)
    key_file = settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(secret) >= 64 and secret == key_file.read_text().strip().encode()
    other = settings.model_copy(update={"data_dir": settings.data_dir.parent / "other"})
    assert url_secret(other) != secret  # made at random, not derived from anything
    given = settings.model_copy(update={"url_secret": "s" * 40})
    assert url_secret(given) == b"s" * 40


def test_a_correctly_signed_url_that_claims_a_long_life_is_refused(settings):
    settings = settings.model_copy(update={"search_requires_key": True, "signed_url_seconds": 60})
    path, secret = "/crops/1/image", url_secret(settings)
    ok = int(time.time()) + 50
    assert valid_signature(settings, path, ok, _sign(secret, path, ok))
    long = int(time.time()) + 3600
    assert not valid_signature(settings, path, long, _sign(secret, path, long))
    past = int(time.time()) - 1
    assert not valid_signature(settings, path, past, _sign(secret, path, past))
