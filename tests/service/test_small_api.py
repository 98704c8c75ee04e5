"""Small things a first API user meets: a JSON syntax error says where and what; one version."""

from __future__ import annotations

from importlib.metadata import version

from service import __version__


def test_a_json_syntax_error_says_line_column_and_what(shared_api) -> None:
    body = '{"description": "a man",\n  "top_k": 5,,\n}'
    r = shared_api.post("/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    message = r.json()["message"]
    assert "line 2, column 14" in message and "character 38" in message, message
    assert "Expecting property name" in message  # what the parser wanted there
    assert r.json()["detail"][0]["msg"] == message


def test_one_version_from_the_project_metadata(shared_api) -> None:
    assert __version__ == version("tbps")
    assert shared_api.get("/openapi.json").json()["info"]["version"] == __version__
