"""Admin endpoints: keys, uploads, deletes, reindex jobs, cameras, stats, audit."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import hash_key
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from tests.service.conftest import ADMIN_KEY


def found(api, crop_id, **filters):
    body = api.post("/search", json={"description": "someone", "top_k": 100, **filters}).json()
    return crop_id in [h["crop_id"] for h in body["hits"]]


def test_admin_needs_a_valid_key(gallery, tiny_encoder):
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        for path in ("/admin/stats", "/admin/jobs", "/admin/cameras", "/admin/audit"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 403
            assert client.get(path, headers={"X-API-Key": ADMIN_KEY}).status_code == 200
        assert client.post("/admin/reindex").status_code == 401
        assert client.delete("/admin/crops/1", headers={"X-API-Key": "x"}).status_code == 403


def test_keys_created_in_the_database_work_and_are_stored_hashed(gallery, tiny_encoder):
    with session_scope(gallery.resolved_database_url) as s:
        crud.add_api_key(s, name="ops", key_sha256=hash_key("db-key-abcdefghijklmnop"))
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        r = client.get("/admin/stats", headers={"X-API-Key": "db-key-abcdefghijklmnop"})
        assert r.status_code == 200
    with session_scope(gallery.resolved_database_url) as s:
        assert crud.active_key_digests(s) == {hash_key("db-key-abcdefghijklmnop"): "ops"}
        assert crud.revoke_api_key(s, name="ops")
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        r = client.get("/admin/stats", headers={"X-API-Key": "db-key-abcdefghijklmnop"})
        assert r.status_code == 403


def test_search_key_setting_covers_images_through_signed_urls(api, gallery, tiny_encoder):
    assert api.get("/crops/1/image", headers={"X-API-Key": ""}).status_code == 200  # public
    settings = gallery.model_copy(update={"search_requires_key": True})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        assert client.post("/search", json={"description": "x"}).status_code == 401
        assert client.get("/crops/1/image").status_code == 401
        hits = client.post("/search", json={"description": "x"},
                           headers={"X-API-Key": ADMIN_KEY}).json()["hits"]
        signed = hits[0]["thumbnail_url"]
        assert "sig=" in signed and client.get(signed).status_code == 200
        assert client.get(hits[0]["image_url"]).status_code == 200
        assert client.get(signed.replace("sig=", "sig=0")).status_code == 403
        other = signed.replace(f"/crops/{hits[0]['crop_id']}/", f"/crops/{hits[1]['crop_id']}/")
        assert client.get(other).status_code == 403  # a signature is for one URL
        assert client.get("/crops/1/image", headers={"X-API-Key": ADMIN_KEY}).status_code == 200


def _bmp(seed):
    buf = io.BytesIO()
    Image.new("RGB", (20, 40), (seed, 10, 200)).save(buf, format="BMP")
    return buf.getvalue()


def test_upload_answers_per_file_keeps_the_good_ones_and_makes_them_searchable(api, gallery,
                                                                              tiny_encoder,
                                                                              image_bytes):
    files = [("files", ("new.png", image_bytes(500), "image/png")),
             ("files", ("new.bmp", _bmp(7), "image/bmp")),
             ("files", ("dup.png", image_bytes(100), "image/png")),  # crop 1 of the gallery
             ("files", ("notes.txt", b"hello", "text/plain")),
             ("files", ("fake.jpg", image_bytes(501)[:100], "image/jpeg"))]
    r = api.post("/admin/crops", files=files,
                 data={"camera": "dock-9", "captured_at": "2026-06-01T10:00:00+02:00",
                       "person_id": "visitor-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["duplicates"], body["rejected"]) == (2, 1, 2)
    statuses = [f["status"] for f in body["files"]]
    assert statuses == ["added", "added", "duplicate", "rejected", "rejected"]
    assert body["files"][2]["crop_id"] == 1 and "not an image" in body["files"][3]["reason"]
    assert body["job"]["kind"] == "add" and body["job"]["status"] == "queued"
    new_id = body["files"][0]["crop_id"]
    assert not found(api, new_id)  # stored, not yet encoded
    assert run_pending(gallery, tiny_encoder) == 1
    assert api.get(f"/admin/jobs/{body['job']['id']}").json()["status"] == "succeeded"
    assert found(api, new_id, cameras=["dock-9"])
    hit = api.post("/search", json={"description": "x", "cameras": ["dock-9"]}).json()["hits"]
    assert {h["captured_at"] for h in hit} == {"2026-06-01T08:00:00Z"}
    assert "dock-9" in [c["name"] for c in api.get("/admin/cameras").json()]


def test_upload_refuses_decompression_bombs_and_needs_its_fields(api):
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 50 MB of pixels in a few KB
    r = api.post("/admin/crops", files=[("files", ("bomb.png", buf.getvalue(), "image/png"))],
                 data={"camera": "c", "captured_at": "2026-06-01T10:00:00Z"})
    assert r.status_code == 422 and r.json()["files"][0]["status"] == "rejected"  # none taken
    assert "pixels" in r.json()["files"][0]["reason"] or "bomb" in r.json()["files"][0]["reason"]
    assert r.json()["detail"][0]["loc"] == ["body", "files", 0]
    r = api.post("/admin/crops", files=[("files", ("a.png", b"x", "image/png"))],
                 data={"camera": "c", "captured_at": "yesterday"})
    assert r.status_code == 422 and "captured_at" in r.json()["message"]


def test_request_bodies_over_the_limit_get_413_unread(gallery, tiny_encoder, image_bytes):
    settings = gallery.model_copy(update={"max_request_bytes": 2048,
                                          "max_json_request_bytes": 2048})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        r = client.post("/admin/crops", headers={"X-API-Key": ADMIN_KEY},
                        files=[("files", ("big.png", b"x" * 4096, "image/png"))],
                        data={"camera": "c", "captured_at": "2026-06-01T10:00:00Z"})
        assert r.status_code == 413 and "2048 bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: counted while it streams
            yield b"{" + b" " * 3000

        r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_delete_one_crop_is_gone_at_once_with_its_file(api, gallery):
    assert found(api, 3)
    with session_scope(gallery.resolved_database_url) as s:
        path = gallery.resolved_crops_dir / crud.get_crop(s, crop_id=3).stored_path
    assert path.exists()
    r = api.delete("/admin/crops/3")
    assert r.status_code == 200 and r.json() == {"deleted": 1, "crop_ids": [3]}
    assert not found(api, 3) and not path.exists()
    assert api.get("/crops/3/image").status_code == 404
    assert api.delete("/admin/crops/3").status_code == 404


def test_retention_delete_by_camera_and_time(api):
    r = api.delete("/admin/crops", params={"camera": "cam-0", "time_to": "2026-05-01T14:30:00Z"})
    assert r.status_code == 200 and r.json()["crop_ids"] == [1, 4, 7]  # 08:00, 11:00, 14:00
    body = api.post("/search", json={"description": "x", "top_k": 100}).json()
    assert len(body["hits"]) == 9
    assert api.delete("/admin/crops").status_code == 422
    assert api.delete("/admin/crops", params={"camera": "nope"}).status_code == 404


def test_reindex_is_a_job_and_a_second_one_is_409(api, gallery, tiny_encoder):
    first = api.post("/admin/reindex")
    assert first.status_code == 202 and first.json()["status"] == "queued"
    second = api.post("/admin/reindex")
    assert second.status_code == 409 and str(first.json()["id"]) in second.json()["detail"]
    version = api.get("/readyz").json()["index_version"]
    assert run_pending(gallery, tiny_encoder) == 1
    job = api.get(f"/admin/jobs/{first.json()['id']}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0, job
    assert api.get("/readyz").json()["index_version"] != version
    assert api.post("/admin/reindex").status_code == 202  # free again
    assert api.get("/admin/jobs/999").status_code == 404


def test_reindex_takes_every_spec_choose_spec_takes(api, gallery, tiny_encoder):
    from indexer.spec import choose_spec

    full = api.post("/admin/reindex", json={"factory": "full:IVF4,Flat"})
    assert full.status_code == 202, full.json()
    assert choose_spec(10, "full:IVF4,Flat").input == "full"
    bad = api.post("/admin/reindex", json={"factory": "Flat; rm -rf /"})
    assert bad.status_code == 422 and "factory" in str(bad.json()["detail"])
    assert api.post("/admin/reindex", json={"factory": "half:IVF4,Flat"}).status_code == 422


@pytest.mark.parametrize(("factory", "why"), [
    ("Zg", "could not parse index string Zg"),
    ("PQ7", "multiple of the number of subquantizers"),
    ("IVF999999999,Flat", "over 262144")])
def test_reindex_refuses_a_factory_faiss_cannot_build_before_any_encoding(shared_api, factory, why):
    with session_scope(shared_api.app.state.settings.resolved_database_url) as s:
        jobs = len(crud.list_jobs(s, limit=200))
    r = shared_api.post("/admin/reindex", json={"factory": factory})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "factory"]
    assert r.json()["message"].startswith("factory: ") and why in r.json()["message"]
    with session_scope(shared_api.app.state.settings.resolved_database_url) as s:
        assert len(crud.list_jobs(s, limit=200)) == jobs  # no job was queued


def test_cameras_create_list_rename(api):
    r = api.post("/admin/cameras", json={"name": "roof", "description": "east"})
    assert r.status_code == 201 and r.json()["crop_count"] == 0
    assert api.post("/admin/cameras", json={"name": "roof"}).status_code == 409
    cams = {c["name"]: c for c in api.get("/admin/cameras").json()}
    assert cams["cam-0"]["crop_count"] == 4
    r = api.patch(f"/admin/cameras/{cams['cam-0']['id']}", json={"name": "gate"})
    assert r.status_code == 200 and r.json()["name"] == "gate" and r.json()["crop_count"] == 4
    assert api.patch(f"/admin/cameras/{cams['cam-1']['id']}", json={"name": "roof"}).status_code \
        == 409
    assert api.patch("/admin/cameras/999", json={"name": "x"}).status_code == 404
    hits = api.post("/search", json={"description": "x", "cameras": ["gate"]}).json()["hits"]
    assert len(hits) == 4 and {h["camera"] for h in hits} == {"gate"}
    assert "gate" in api.get("/cameras").json()


def test_stats_and_audit(api):
    api.delete("/admin/crops/2")
    stats = api.get("/admin/stats").json()
    assert stats["crops"] == {"indexed": 11, "deleted": 1} and stats["cameras"] == 3
    assert stats["persons"] == 4 and stats["index"]["count"] >= 11
    actions = [e["action"] for e in api.get("/admin/audit").json()]
    assert "crops.delete" in actions and "reindex" in actions
