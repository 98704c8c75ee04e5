"""The HTTP surface at its edges: HEAD, Allow, content types, epoch numbers for times,
invisible names and descriptions, a repeated key header, and how images may be cached."""

from __future__ import annotations

import pytest

FORM = {"camera": "cam-0", "captured_at": "2026-06-01T08:00:00Z"}


def _allowed(response) -> set[str]:
    return {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.parametrize("path", ["/healthz", "/cameras", "/crops/1/image", "/admin/stats",
                                  "/"])
def test_head_answers_on_get_routes_without_a_body(api, path):
    got, head = api.get(path), api.head(path)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_allow_lists_every_method_of_the_path(api):
    r = api.put("/admin/crops")
    assert r.status_code == 405 and _allowed(r) == {"POST", "DELETE"}
    r = api.put("/admin/cameras")
    assert r.status_code == 405 and _allowed(r) == {"GET", "HEAD", "POST"}
    r = api.head("/search")
    assert r.status_code == 405 and _allowed(r) == {"POST"}


@pytest.mark.parametrize("path", ["/search", "/admin/cameras"])
@pytest.mark.parametrize("ctype", ["text/plain", None])
def test_a_body_that_is_not_json_on_a_json_route_is_415(api, path, ctype):
    r = api.post(path, content='{"description": "a man", "name": "c"}',
                 headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_json_with_a_charset_and_a_post_without_a_body_stay_accepted(api):
    r = api.post("/search", content='{"description": "a man"}',
                 headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert api.post("/admin/reindex").status_code == 202
