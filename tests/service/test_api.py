"""The HTTP API through FastAPI's test client, on a real database, index and model."""

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.jobs.index_backend import backend_from_settings
from service.jobs.index_jobs import build_full
from service.jobs.ingest import ingest_folder
from service.main import create_app
from service.store.db import session_scope


@pytest.fixture
def client(migrated_settings, tiny_encoder):
    with TestClient(create_app(migrated_settings, encoder=tiny_encoder)) as c:
        yield c


@pytest.fixture
def indexed(migrated_settings, image_folder, tiny_encoder):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, image_folder)
    with session_scope(s.resolved_database_url) as session:
        build_full(session, tiny_encoder, s.resolved_crops_dir, backend_from_settings(s))
    return s


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.fixture
def thawed_heap() -> Iterator[None]:
    """The heap the test session froze (tests/conftest.py) unfrozen for one test of the
    app's own freezing; frozen again after it."""
    gc.unfreeze()
    yield
    gc.collect()
    gc.freeze()


def test_startup_heap_is_frozen_while_serving_and_released_at_shutdown(migrated_settings,
                                                                       tiny_encoder,
                                                                       thawed_heap):
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(migrated_settings, encoder=tiny_encoder)) as c:
        assert c.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 1000  # the loaded app is out of the full collections
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_before_start_is_left_frozen_at_shutdown(migrated_settings,
                                                              tiny_encoder):
    """A pre-fork server (or the test session) froze it: the app neither collects it again
    nor thaws what it did not freeze."""
    gc.freeze()
    before = gc.get_freeze_count()
    with TestClient(create_app(migrated_settings, encoder=tiny_encoder)) as c:
        assert c.get("/healthz").status_code == 200
    assert before > 1000
    assert gc.get_freeze_count() > 0.9 * before  # not thawed (objects that die leave it)


def test_search_before_any_index_says_what_to_do(client):
    r = client.post("/search", json={"description": "a man in a red jacket"})
    assert r.status_code == 503 and "tbps index" in r.json()["detail"]


def test_search_returns_ranked_hits_with_metadata(indexed, client, tiny_encoder):
    r = client.post("/search", json={"description": "a man in a red jacket", "top_k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert len(hits) == 4
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert {h["camera"] for h in hits} <= {"cam-a", "cam-b"}
    assert all(h["image_url"] == f"/crops/{h['crop_id']}/image" for h in hits)
    assert all(abs(sum(h["parts"].values()) - h["score"]) < 1e-4 for h in hits)
    img = client.get(hits[0]["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"


def test_top_k_larger_than_gallery_returns_everything(indexed, client):
    r = client.post("/search", json={"description": "someone", "top_k": 100})
    assert r.status_code == 200 and len(r.json()["hits"]) == 6


@pytest.mark.parametrize("payload, where", [
    ({"description": ""}, "description"),
    ({"description": "   "}, "description is blank"),
    ({"description": "x" * 513}, "description"),
    ({"description": "a man", "top_k": 0}, "top_k"),
    ({"description": "a man", "top_k": 101}, "top_k"),
    ({"description": "a man", "top_k": "many"}, "top_k"),
    ({"description": 42}, "description"),
    ({"top_k": 5}, "give a description, example crop ids in `like`, or both"),
    ({"description": "a man", "colour": "red"}, "colour"),
])
def test_bad_search_requests_get_422_saying_what_to_fix(client, payload, where):
    r = client.post("/search", json=payload)
    assert r.status_code == 422
    assert where in r.json()["message"]


def test_malformed_json_gets_422(client):
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]


def test_unknown_crop_image_is_404(client):
    r = client.get("/crops/12345/image")
    assert r.status_code == 404 and "12345" in r.json()["detail"]
    assert client.get("/crops/abc/image").status_code == 422


def test_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="search-form"' in r.text
    assert client.get("/static/app.js").status_code == 200
