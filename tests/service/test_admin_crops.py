"""The admin crops browser's list, uploads without a capture time, duplicates reported, and the
one admin change helper (change -> audit -> commit -> notify)."""

import pytest
from fastapi.testclient import TestClient

from service.api import administration as admin
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from tests.service.conftest import ADMIN_KEY
from tests.service.test_admin import found


def test_list_crops_filters_pages_and_says_what_is_wrong(api):
    page = api.get("/admin/crops").json()
    assert page["total"] == 12 and [c["crop_id"] for c in page["crops"]] == list(range(12, 0, -1))
    first = page["crops"][-1]
    assert (first["camera"], first["person_id"], first["file_name"], first["status"]) == (
        "cam-0", "p0", "c0.png", "indexed")
    assert api.get(first["thumbnail_url"]).status_code == 200
    page = api.get("/admin/crops", params={"camera": "cam-1", "limit": 2, "offset": 1}).json()
    assert page["total"] == 4 and [c["crop_id"] for c in page["crops"]] == [8, 5]
    page = api.get("/admin/crops", params={"person_id": "p1"}).json()
    assert [c["crop_id"] for c in page["crops"]] == [6, 5, 4]
    assert api.get("/admin/crops", params={"status": "pending"}).json()["total"] == 0
    api.delete("/admin/crops/12")
    assert api.get("/admin/crops").json()["total"] == 11  # deleted crops are not listed
    r = api.get("/admin/crops", params={"camera": "nowhere"})
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]
    for bad in ({"status": "deleted"}, {"limit": 0}, {"limit": 201}, {"offset": -1}):
        r = api.get("/admin/crops", params=bad)
        assert r.status_code == 422 and next(iter(bad)) in r.json()["message"], r.text
    assert api.get("/admin/crops", headers={"X-API-Key": ""}).status_code == 401
    assert api.get("/admin/crops", headers={"X-API-Key": "wrong"}).status_code == 403


def test_list_crops_signs_image_urls_when_searches_need_a_key(gallery, tiny_encoder):
    settings = gallery.model_copy(update={"search_requires_key": True})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        crops = client.get("/admin/crops", headers={"X-API-Key": ADMIN_KEY}).json()["crops"]
        assert "sig=" in crops[0]["thumbnail_url"]
        assert client.get(crops[0]["thumbnail_url"]).status_code == 200  # no key: signed


def test_upload_without_capture_time_is_stored_and_searchable_and_duplicates_say_so(
        api, gallery, tiny_encoder, image_bytes):
    files = [("files", ("new.png", image_bytes(900), "image/png")),
             ("files", ("again.png", image_bytes(100), "image/png"))]  # crop 1 of the gallery
    r = api.post("/admin/crops", files=files, data={"camera": "dock-2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["duplicates"]) == (1, 1)
    dup = body["files"][1]
    assert dup["status"] == "duplicate" and dup["crop_id"] == 1 and "crop 1" in dup["reason"]
    new_id = body["files"][0]["crop_id"]
    assert run_pending(gallery, tiny_encoder) == 1
    assert found(api, new_id, cameras=["dock-2"])
    hit = api.post("/search", json={"description": "x", "cameras": ["dock-2"]}).json()["hits"]
    assert hit[0]["captured_at"] is None
    assert not found(api, new_id, time_from="2000-01-01T00:00:00Z")  # no time: no time filter
    r = api.post("/admin/crops", files=files[:1], data={"camera": "dock-2", "captured_at": ""})
    assert r.status_code == 200 and r.json()["duplicates"] == 1  # an empty field: no time


def test_a_failed_admin_change_rolls_back_audits_nothing_and_cleans_up(gallery):
    undone = []
    with session_scope(gallery.resolved_database_url) as s:
        with pytest.raises(RuntimeError), admin.admin_change(
                s, gallery, action="cameras.create", actor="ops",
                on_failure=lambda: undone.append(True)) as change:
            crud.create_camera(s, name="half-made", description=None)
            change.target = "camera:half-made"
            raise RuntimeError("boom")
        assert undone == [True] and crud.get_camera_by_name(s, name="half-made") is None
        with admin.admin_change(s, gallery, action="cameras.create", actor="ops") as change:
            crud.create_camera(s, name="made", description=None)
            change.target = "camera:made"
        assert crud.get_camera_by_name(s, name="made") is not None
        actions = [(e.action, e.target) for e in crud.list_audit(s, limit=10)]
        assert actions == [("cameras.create", "camera:made")]
