"""Bad paths answered with a status and a message: dates that overflow in UTC, a full disk, a
read-only crops folder, an upload where every file is refused, and unhandled errors (a JSON
500 with an error id; the keep-alive connection stays usable)."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus
from tests.service.conftest import mount_tmpfs

FORM = {"camera": "cam-x", "captured_at": "2026-06-01T08:00:00Z"}


@pytest.mark.parametrize("body", [
    {"description": "a man", "time_from": "9999-12-31T23:59:59-14:00"},
    {"description": "a man", "time_to": "0001-01-01T00:00:00+14:00"}])
def test_search_times_that_overflow_in_utc_are_422(shared_api, body):
    r = shared_api.post("/search", json=body)
    assert r.status_code == 422 and "out of range" in r.json()["message"]


def test_delete_and_upload_times_that_overflow_are_422_and_store_nothing(api, gallery,
                                                                        image_bytes):
    r = api.delete("/admin/crops", params={"time_to": "9999-12-31T23:59:59-14:00"})
    assert r.status_code == 422 and "out of range" in r.json()["message"]
    before = sorted(gallery.resolved_crops_dir.rglob("*"))
    r = api.post("/admin/crops", data={**FORM, "captured_at": "0001-01-01T00:00:00+14:00"},
                 files=[("files", ("a.png", image_bytes(301), "image/png"))])
    assert r.status_code == 422 and "out of range" in r.json()["message"]
    assert sorted(gallery.resolved_crops_dir.rglob("*")) == before


def test_an_upload_with_every_file_refused_is_422_with_reasons(api):
    r = api.post("/admin/crops", data=FORM, files=[("files", ("a.txt", b"hello", "text/plain")),
                                                   ("files", ("b.png", b"", "image/png"))])
    assert r.status_code == 422
    body = r.json()
    assert body["added"] == 0 and body["rejected"] == 2
    assert [d["loc"] for d in body["detail"]] == [["body", "files", 0], ["body", "files", 1]]
    assert "not an image" in body["detail"][0]["msg"] and "empty" in body["detail"][1]["msg"]


def _files_under(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_a_full_disk_is_507_and_leaves_no_file_or_row(gallery, tiny_encoder, image_bytes,
                                                      small_crops_dir):
    settings = gallery.model_copy(update={"crops_dir": small_crops_dir})
    big = image_bytes(5, size=(200, 200))  # ~120 KB of PNG noise: over the 64 KiB disk
    with TestClient(create_app(settings, encoder=tiny_encoder),
                    headers={"X-API-Key": "test-admin-key-0123456789"}) as client:
        r = client.post("/admin/crops", data=FORM, files=[("files", ("big.png", big, "image/png"))])
        assert r.status_code == 507 and "disk is full" in r.json()["detail"]
        small = client.post("/admin/crops", data=FORM,
                            files=[("files", ("ok.png", image_bytes(6), "image/png"))])
        assert small.status_code == 200  # the disk is usable again: nothing was left behind
    with session_scope(settings.resolved_database_url) as s:
        assert crud.count_crops(s) == 13
    assert len(_files_under(small_crops_dir)) == 1


def test_a_read_only_crops_folder_is_503_on_upload_and_delete(gallery, tiny_encoder,
                                                              image_bytes, small_crops_dir):
    settings = gallery.model_copy(update={"crops_dir": small_crops_dir})
    headers = {"X-API-Key": "test-admin-key-0123456789"}
    with TestClient(create_app(settings, encoder=tiny_encoder), headers=headers) as client:
        r = client.post("/admin/crops", data=FORM,
                        files=[("files", ("ok.png", image_bytes(6), "image/png"))])
        crop_id = r.json()["files"][0]["crop_id"]
        subprocess.run(["mount", "-o", "remount,ro", str(small_crops_dir)], check=True)
        r = client.post("/admin/crops", data=FORM,
                        files=[("files", ("two.png", image_bytes(7), "image/png"))])
        assert r.status_code == 503 and "not writable" in r.json()["detail"]
        r = client.delete(f"/admin/crops/{crop_id}")
        assert r.status_code == 503 and "not writable" in r.json()["detail"]
    with session_scope(settings.resolved_database_url) as s:
        assert crud.get_crop(s, crop_id=crop_id).status != CropStatus.deleted  # not half done
        assert crud.count_crops(s) == 13


def test_a_read_only_data_dir_still_serves_thumbnails_uncached(api, gallery):
    thumbs = gallery.resolved_thumbs_dir
    mount_tmpfs(thumbs, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(thumbs)], check=True)
        r = api.get("/crops/3/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.content[:3] == b"\xff\xd8\xff"  # a JPEG, made in memory
        assert not any(thumbs.rglob("*"))  # nothing cached, no temp file left
    finally:
        subprocess.run(["umount", "-l", str(thumbs)], check=False)
    assert api.get("/crops/3/thumbnail").status_code == 200  # writable again: cached
    assert len(list(thumbs.rglob("*.jpg"))) == 1


def _serve(app) -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, sock.getsockname()[1]


def test_an_unhandled_error_is_a_json_500_and_the_connection_stays_usable(gallery,
                                                                          tiny_encoder, caplog):
    import http.client

    app = create_app(gallery, encoder=tiny_encoder)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:  # stands for any bug in a route
        raise RuntimeError("a bug")

    server, port = _serve(app)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with caplog.at_level(logging.ERROR, logger="service.api.errors"):
            conn.request("GET", "/boom")
            r = conn.getresponse()
            body = r.read()
        assert r.status == 500 and b"error_id" in body
        error_id = __import__("json").loads(body)["error_id"]
        assert any(error_id in rec.getMessage() for rec in caplog.records)
        conn.request("GET", "/healthz")  # the same keep-alive connection
        again = conn.getresponse()
        assert again.status == 200 and again.read() == b'{"status":"ok"}'
        conn.close()
    finally:
        server.should_exit = True


def test_a_full_database_disk_is_507_on_reindex(tmp_path, tiny_encoder):
    from service.config import Settings
    from service.store.db import migrate

    data = tmp_path / "fulldb"
    mount_tmpfs(data, "2m")
    try:
        s = Settings(data_dir=data, environment="test", device="cpu",
                     admin_keys="test-admin-key-0123456789")
        s.ensure_dirs()
        migrate(s.resolved_database_url)
        with TestClient(create_app(s, encoder=tiny_encoder),
                        headers={"X-API-Key": "test-admin-key-0123456789"}) as client:
            filler = data / "filler"
            with filler.open("wb") as fh:  # take every free block
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            statuses = {client.post("/admin/reindex").status_code for _ in range(3)}
            assert statuses <= {507, 409} and 507 in statuses
            filler.unlink()
            assert client.post("/admin/reindex").status_code in (202, 409)
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)
