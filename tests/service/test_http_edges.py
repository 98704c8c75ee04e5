"""The HTTP surface at its edges: HEAD, Allow, content types, epoch numbers for times,
invisible names and descriptions, a repeated key header, and how images may be cached."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.search.urls import crop_url
from tests.service.conftest import ADMIN_KEY

FORM = {"camera": "cam-0", "captured_at": "2026-06-01T08:00:00Z"}


def _allowed(response) -> set[str]:
    return {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.parametrize("path", ["/healthz", "/cameras", "/crops/1/image", "/admin/stats",
                                  "/"])
def test_head_answers_on_get_routes_without_a_body(shared_api, path):
    got, head = shared_api.get(path), shared_api.head(path)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_allow_lists_every_method_of_the_path(shared_api):
    r = shared_api.put("/admin/crops")
    assert r.status_code == 405 and _allowed(r) == {"GET", "HEAD", "POST", "DELETE"}
    r = shared_api.put("/admin/cameras")
    assert r.status_code == 405 and _allowed(r) == {"GET", "HEAD", "POST"}
    r = shared_api.head("/search")
    assert r.status_code == 405 and _allowed(r) == {"POST"}


@pytest.mark.parametrize("path", ["/search", "/admin/cameras"])
@pytest.mark.parametrize("ctype", ["text/plain", None])
def test_a_body_that_is_not_json_on_a_json_route_is_415(shared_api, path, ctype):
    r = shared_api.post(path, content='{"description": "a man", "name": "c"}',
                 headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_json_with_a_charset_and_a_post_without_a_body_stay_accepted(api):
    r = api.post("/search", content='{"description": "a man"}',
                 headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert api.post("/admin/reindex").status_code == 202


@pytest.mark.parametrize("value", [0, "0", "-1", -1, 1780000000, "1780000000.5"])
def test_epoch_numbers_are_not_times(shared_api, value):
    r = shared_api.post("/search", json={"description": "a man", "time_from": value})
    assert r.status_code == 422 and "ISO 8601" in r.json()["message"], r.text
    r = shared_api.delete("/admin/crops", params={"time_to": str(value)})
    assert r.status_code == 422 and "ISO 8601" in r.json()["message"]
    r = shared_api.post("/admin/crops", data={**FORM, "captured_at": str(value)},
                 files=[("files", ("a.png", b"x", "image/png"))])
    assert r.status_code == 422 and "captured_at" in r.json()["message"]
    assert "ISO 8601" in r.json()["message"]


@pytest.mark.parametrize("description", ["\u0000", "\u0000 \u0007\u200b", " \t\n"])
def test_a_description_of_control_or_invisible_characters_is_blank(shared_api, description):
    r = shared_api.post("/search", json={"description": description})
    assert r.status_code == 422 and "blank" in r.json()["message"]


@pytest.mark.parametrize("name", ["\u200b", "\ufeffcam-a", "cam-a\u200d", "\u2060\u200b"])
def test_camera_names_made_of_or_starting_with_invisible_characters_are_refused(api, name,
                                                                               image_bytes):
    r = api.post("/admin/cameras", json={"name": name})
    assert r.status_code == 422 and "invisible" in r.json()["message"], r.text
    r = api.post("/admin/crops", data={**FORM, "camera": name},
                 files=[("files", ("a.png", image_bytes(501), "image/png"))])
    assert r.status_code == 422 and "camera" in r.json()["message"]
    names = [c["name"] for c in api.get("/admin/cameras").json()]
    assert not any(n.strip("\u200b\ufeff\u200d\u2060") != n for n in names)
    assert api.post("/admin/cameras", json={"name": "cam\u00e9-\u00fc"}).status_code == 201


@pytest.mark.parametrize("path,method", [("/admin/stats", "GET"), ("/search", "POST")])
def test_two_api_key_headers_are_refused(shared_api, path, method):
    r = shared_api.request(method, path,
                           json={"description": "a man"} if method == "POST" else None,
                    headers=[("X-API-Key", ADMIN_KEY), ("X-API-Key", "another-key")])
    assert r.status_code == 400 and "one X-API-Key" in r.json()["detail"]


def test_key_protected_images_are_cached_privately_no_longer_than_a_signed_url(gallery,
                                                                               tiny_encoder):
    settings = gallery.model_copy(update={"search_requires_key": True, "signed_url_seconds": 60})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        for kind in ("image", "thumbnail"):
            signed = client.get(crop_url(settings, 2, kind))
            keyed = client.get(f"/crops/2/{kind}", headers={"X-API-Key": ADMIN_KEY})
            for r in (signed, keyed):
                assert r.status_code == 200
                cache = r.headers["cache-control"]
                assert "private" in cache and "public" not in cache, cache
                assert "immutable" not in cache
                assert int(re.search(r"max-age=(\d+)", cache).group(1)) <= 60
    public = gallery.model_copy(update={"search_requires_key": False})
    with TestClient(create_app(public, encoder=tiny_encoder)) as client:
        assert "public" in client.get("/crops/2/image").headers["cache-control"]
