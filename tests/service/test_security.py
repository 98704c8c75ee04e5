"""Authentication before the body, audited refusals, key names, proxies, metrics, input
hygiene (control characters, padded names, strict types)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.cli.main import proxy_options
from service.main import create_app
from tests.service.conftest import ADMIN_KEY

FORM = {"captured_at": "2026-06-01T08:00:00Z"}


def _serve(app, **options) -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, sock.getsockname()[1]


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body(gallery, tiny_encoder):
    server, port = _serve(create_app(gallery, encoder=tiny_encoder))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /admin/crops HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            chunk = b"x" * 65536
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # 64 KiB of 200 MB promised
            conn.settimeout(5)
            reply = conn.recv(4096)  # before the fix: no answer until the body ends
        assert reply.startswith(b"HTTP/1.1 401")
    finally:
        server.should_exit = True


def test_refused_keys_are_audited_without_key_material(api):
    api.get("/admin/stats", headers={"X-API-Key": "wrong-key-abc"})
    api.post("/admin/reindex", headers={"X-API-Key": ""})
    rows = api.get("/admin/audit", params={"action": "auth.denied"}).json()
    assert {(r["target"], r["detail"]["status"]) for r in rows} == {("/admin/stats", 403),
                                                                    ("/admin/reindex", 401)}
    assert all("wrong-key" not in str(r) for r in rows)


def test_env_key_actor_names_reveal_nothing_of_the_digest(api, gallery):
    api.post("/admin/cameras", json={"name": "k-cam"})
    actor = api.get("/admin/audit", params={"action": "cameras.create"}).json()[0]["actor"]
    assert actor == "env-key-1"
    assert not any(d[:8] in actor for d in gallery.admin_key_digests)


def _audit_client(port: int, forwarded: str) -> str:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/admin/cameras", body=json.dumps({"name": f"c{forwarded}"}),
                 headers={"X-API-Key": ADMIN_KEY, "X-Forwarded-For": forwarded,
                          "Content-Type": "application/json"})
    created = conn.getresponse()
    assert created.status == 201, created.read()
    created.read()
    conn.request("GET", "/admin/audit?action=cameras.create", headers={"X-API-Key": ADMIN_KEY})
    return json.loads(conn.getresponse().read())[0]["client"]


@pytest.mark.parametrize("trusted,expected", [("", "127.0.0.1"), ("127.0.0.1", "203.0.113.9")])
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(gallery, tiny_encoder,
                                                               trusted, expected):
    settings = gallery.model_copy(update={"trusted_proxies": trusted})
    server, port = _serve(create_app(settings, encoder=tiny_encoder), **proxy_options(settings))
    try:
        assert _audit_client(port, "203.0.113.9") == expected
    finally:
        server.should_exit = True


@pytest.mark.parametrize("access,anonymous,keyed", [("public", 200, 200), ("key", 401, 200),
                                                    ("off", 404, 404)])
def test_metrics_access_is_configurable(gallery, tiny_encoder, access, anonymous, keyed):
    settings = gallery.model_copy(update={"metrics_access": access})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        assert client.get("/metrics").status_code == anonymous
        assert client.get("/metrics", headers={"X-API-Key": ADMIN_KEY}).status_code == keyed


def test_production_keeps_metrics_behind_a_key(gallery):
    prod = gallery.model_copy(update={"environment": "production"})
    assert prod.resolved_metrics_access == "key"


@pytest.mark.parametrize("field,value", [("camera", "cam\x00x"), ("camera", "cam\nx"),
                                         ("person_id", "p\x1b[31m"), ("camera", "   ")])
def test_control_characters_in_names_and_ids_are_refused(shared_api, image_bytes, field, value):
    data = {**FORM, "camera": "ok-cam", field: value}
    r = shared_api.post("/admin/crops", data=data,
                 files=[("files", ("a.png", image_bytes(401), "image/png"))])
    assert r.status_code == 422 and field in r.json()["message"]
    assert shared_api.post("/admin/cameras", json={"name": "a\x00b"}).status_code == 422


def test_a_padded_camera_name_is_stored_and_audited_stripped(api, image_bytes):
    r = api.post("/admin/crops", data={**FORM, "camera": "  padcam  "},
                 files=[("files", ("a.png", image_bytes(402), "image/png"))])
    assert r.status_code == 200
    assert "padcam" in [c["name"] for c in api.get("/admin/cameras").json()]
    entry = api.get("/admin/audit", params={"action": "crops.upload"}).json()[0]
    assert entry["target"] == "camera:padcam"


@pytest.mark.parametrize("top_k", ["5", True, 5.5])
def test_top_k_must_be_a_json_integer(shared_api, top_k):
    r = shared_api.post("/search", json={"description": "a man", "top_k": top_k})
    assert r.status_code == 422
    assert shared_api.post("/search", json={"description": "a man", "top_k": 5}).status_code == 200


def test_unknown_http_methods_share_one_metrics_label(gallery, tiny_encoder):
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        for i in range(50):
            client.request(f"X{i}Y", "/healthz")
            client.request(f"Z{i}", f"/no/such/path/{i}")
        client.request("GET", "/healthz")
        series = [line for line in client.get("/metrics").text.splitlines()
                  if line.startswith("tbps_http_requests_total{")]
    methods = {line.split('method="')[1].split('"')[0] for line in series}
    assert methods == {"GET", "other"}, methods
    assert len(series) <= 5, series  # GET /healthz 200, other x 2 routes, GET /metrics


def test_a_search_body_has_a_small_limit_and_uploads_keep_their_large_one(gallery,
                                                                          tiny_encoder,
                                                                          image_bytes):
    server, port = _serve(create_app(gallery, encoder=tiny_encoder))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 200000000\r\n\r\n{")  # 200 MB promised
            conn.settimeout(5)
            reply = conn.recv(4096)  # before the fix: none, the server waits for the body
            while not reply.endswith(b"}"):
                reply += conn.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413") and b"TBPS_MAX_JSON_REQUEST_BYTES" in reply
    finally:
        server.should_exit = True
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        padded = '{"description": "a man"' + " " * 70_000 + "}"  # 70 KB, valid JSON
        r = client.post("/search", content=padded, headers={"content-type": "application/json"})
        assert r.status_code == 413
        big = image_bytes(7, size=(200, 200))  # ~120 KB: more than a search may send
        r = client.post("/admin/crops", headers={"X-API-Key": ADMIN_KEY},
                        data={**FORM, "camera": "cam-0"},
                        files=[("files", ("big.png", big, "image/png"))])
        assert r.status_code == 200 and r.json()["added"] == 1


def test_refused_admin_requests_are_audited_at_most_n_per_client_per_minute(gallery,
                                                                           tiny_encoder):
    settings = gallery.model_copy(update={"denied_audit_per_minute": 3})
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        for i in range(8):
            r = client.get("/admin/stats", headers={"X-API-Key": f"wrong-key-{i}"})
            assert r.status_code == 403  # refused all the same
        rows = client.get("/admin/audit", params={"action": "auth.denied"},
                          headers={"X-API-Key": ADMIN_KEY}).json()
        assert len(rows) == 3
        assert "tbps_auth_denied_unaudited_total 5.0" in client.get("/metrics").text
