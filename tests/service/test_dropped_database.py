"""A database dropped and recreated empty under a running service: every endpoint that needs
it answers 503 "not migrated, run `tbps migrate`" (not 500), /readyz is not ready, and the
worker refuses to start on it rather than migrate what `serve` would refuse."""

from __future__ import annotations

from sqlalchemy import MetaData, create_engine

from service.cli.main import main
from service.config import get_settings
from service.store.db import get_engine, schema_problem

NOT_MIGRATED = "not migrated: run `tbps migrate`"
ROUTES = [("GET", "/status", None), ("POST", "/search", {"description": "a man"}),
          ("GET", "/cameras", None), ("GET", "/cameras/info", None),
          ("GET", "/crops/1/image", None), ("GET", "/crops/1/thumbnail", None),
          ("GET", "/persons/p0/sightings", None), ("GET", "/admin/stats", None),
          ("GET", "/admin/jobs", None), ("GET", "/admin/cameras", None),
          ("GET", "/admin/audit", None), ("POST", "/admin/reindex", None)]


def _drop_every_table(url: str) -> None:
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


def test_every_endpoint_is_503_not_migrated_and_readyz_not_ready_after_a_drop(api, gallery):
    assert api.get("/readyz").status_code == 200
    _drop_every_table(gallery.resolved_database_url)
    answers = {path: api.request(method, path, json=body) for method, path, body in ROUTES}
    wrong = {path: (r.status_code, r.text[:120]) for path, r in answers.items()
             if r.status_code != 503 or NOT_MIGRATED not in r.json()["detail"]}
    assert not wrong
    r = api.get("/readyz")
    assert r.status_code == 503 and "tbps migrate" in r.json()["reason"]


def test_the_worker_refuses_a_configured_database_that_is_not_migrated(settings, database_url,
                                                                      monkeypatch, capsys):
    monkeypatch.setenv("TBPS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("TBPS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        assert main(["worker", "--once"]) == 2
    finally:
        get_settings.cache_clear()
    assert "never migrated: run `tbps migrate`" in capsys.readouterr().err
    get_engine.cache_clear()
    assert "never migrated" in schema_problem(database_url)  # left as it was
