"""A Milvus lost after the service started: requests that need the index answer 503 naming the
backend, nothing stored is lost (tables unchanged, an upload's crop kept, its index job failed
and retryable), and once the server is back the same app serves again, without a restart.

The server is the session's real Milvus behind a TCP proxy (``tests.tcp_proxy``) that the test
closes and opens again on the same port."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from service.store.orm import Camera, Crop, CropStatus, IndexVersion, Job, JobStatus
from tests.conftest import milvus_prefix
from tests.service.conftest import ADMIN_KEY
from tests.tcp_proxy import TcpProxy

pytest.importorskip("pymilvus", reason="the scale extra")

TIMEOUT_S = 15.0  # a build loads collections under it: seconds on a busy 2-core machine
CATALOG = (Camera, Crop, IndexVersion, Job)
FORM = {"camera": "cam-0", "captured_at": "2026-06-01T08:00:00Z"}


@pytest.fixture
def via_proxy(gallery, milvus_proxy: TcpProxy, request: pytest.FixtureRequest, tmp_path):
    """The gallery's settings on Milvus through ``milvus_proxy`` (its collections dropped after)."""
    from indexer.backends.milvus_backend import MilvusBackend

    settings = gallery.model_copy(update={
        "index_backend": "milvus", "milvus_uri": milvus_proxy.uri, "milvus_timeout": TIMEOUT_S,
        "milvus_prefix": milvus_prefix(request)})
    yield settings
    if milvus_proxy.listener is None:  # a test that failed with the server "down"
        milvus_proxy.open()
    left = MilvusBackend(root=tmp_path / "drop", uri=milvus_proxy.uri,
                         prefix=settings.milvus_prefix)
    left.drop_all()
    left.close()


def _counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {t.__tablename__: session.scalar(select(func.count()).select_from(t))
                for t in CATALOG}


def _down(r, uri: str) -> str:
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert f"Milvus at {uri}" in detail and "unreachable" in detail, detail
    assert "TBPS_MILVUS_URI" in detail and r.headers["Retry-After"].isdigit()
    return detail


def test_a_lost_milvus_is_503_loses_nothing_and_recovers(via_proxy, milvus_proxy, tiny_encoder,
                                                         image_bytes):
    s, url = via_proxy, via_proxy.resolved_database_url
    with TestClient(create_app(s, encoder=tiny_encoder)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/admin/reindex").status_code == 202
        assert run_pending(s, tiny_encoder) == 1
        first = client.post("/search", json={"description": "a man", "top_k": 5})
        assert first.status_code == 200 and len(first.json()["hits"]) == 5
        before = _counts(url)

        milvus_proxy.close()
        _down(client.post("/search", json={"description": "a man", "top_k": 5}), milvus_proxy.uri)
        for path in ("/status", "/admin/stats"):
            _down(client.get(path), milvus_proxy.uri)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
        assert _counts(url) == before

        upload = client.post("/admin/crops", data=FORM,
                             files=[("files", ("new.png", image_bytes(500), "image/png"))])
        assert upload.status_code == 200 and upload.json()["added"] == 1, upload.text
        crop_id = upload.json()["files"][0]["crop_id"]
        assert run_pending(s, tiny_encoder) == 1  # the add job runs, and fails
        with session_scope(url) as session:
            crop = crud.get_crop(session, crop_id=crop_id)
            assert crop.status == CropStatus.pending
            assert (s.resolved_crops_dir / crop.stored_path).is_file()
            job = crud.list_jobs(session, limit=1)[0]
            assert job.kind == "add" and job.status == JobStatus.failed
            assert "unreachable" in job.message

        milvus_proxy.open()  # the server is back: the same app, no restart
        deadline = time.monotonic() + 60  # gRPC reconnects with a backoff of seconds
        while (again := client.post("/search", json={"description": "a man", "top_k": 5})
               ).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert again.status_code == 200
        assert [h["crop_id"] for h in again.json()["hits"]] == \
            [h["crop_id"] for h in first.json()["hits"]]
        assert client.get("/readyz").json()["status"] == "ready"
        with session_scope(url) as session:  # the failed add is retried by the next one
            crud.create_job(session, kind="add", created_by="test")
            session.commit()
        assert run_pending(s, tiny_encoder) == 1
        with session_scope(url) as session:
            assert crud.get_crop(session, crop_id=crop_id).status == CropStatus.indexed
        assert client.get("/status").json()["searchable"] == 13
