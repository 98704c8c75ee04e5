"""A data dir never migrated: the embedded default is migrated at start, a configured
database makes `tbps serve` refuse with a message naming `tbps migrate`, and /readyz is 503."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.cli.main import prepare_database
from service.main import create_app
from service.store.db import schema_problem


def test_readyz_is_not_ready_on_an_unmigrated_database(settings, tiny_encoder):
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "tbps migrate" in r.json()["reason"]
        r = client.get("/admin/stats", headers={"X-API-Key": "whatever-key-123456"})
        assert r.status_code == 503  # no such table: unavailable, not a bare 500


def test_serve_migrates_the_embedded_default_at_start(settings):
    assert settings.database_url is None
    assert schema_problem(settings.resolved_database_url) is not None
    assert prepare_database(settings) is None
    assert schema_problem(settings.resolved_database_url) is None


def test_serve_refuses_a_configured_database_that_is_not_migrated(settings, database_url):
    configured = settings.model_copy(update={"database_url": database_url})
    problem = prepare_database(configured)
    assert problem and "never migrated" in problem and "tbps migrate" in problem
