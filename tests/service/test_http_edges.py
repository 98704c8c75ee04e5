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
