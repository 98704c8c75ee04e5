"""The live index as the server finds it on disk: a version whose vectors were overwritten, or
whose folder was deleted, is never served. The previous version serves when it is sound; else
the service is not ready (503 with the reason), and the next add job rebuilds the index."""

from __future__ import annotations

import shutil

import numpy as np
from fastapi.testclient import TestClient

from indexer.backends.base import split_pointer
from indexer.backends.faiss_store import IndexStore
from service.jobs import index_jobs
from service.jobs.index_backend import backend_from_settings
from service.jobs.indexing import job_needed
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus, JobStatus
from tests.service.conftest import ADMIN_KEY

FORM = {"camera": "cam-x", "captured_at": "2026-06-01T08:00:00Z"}
QUERY = {"description": "a person in a red coat", "top_k": 20}


def _live_folder(settings):
    store = IndexStore(settings.resolved_index_dir)
    pointer = store.current_version()
    return pointer, store.versions / split_pointer(pointer)[0]


def _scribble(npy):
    """Overwrite everything after the .npy header with noise, in place (as a bad disk or a
    stray write would): the header still reads, the vectors are garbage."""
    with npy.open("r+b") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        start = fh.tell()
        size = fh.seek(0, 2) - start
        fh.seek(start)
        fh.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def _restart(settings, encoder) -> TestClient:
    return TestClient(create_app(settings, encoder=encoder), headers={"X-API-Key": ADMIN_KEY})


def test_a_corrupt_live_index_is_refused_with_a_reason(api, gallery, tiny_encoder):
    pointer, folder = _live_folder(gallery)
    _scribble(folder / "vectors.npy")
    with _restart(gallery, tiny_encoder) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert f"index version {pointer} is corrupt" in ready.json()["reason"]
        search = client.post("/search", json=QUERY)
        assert search.status_code == 503 and "corrupt" in search.json()["detail"]
        status = client.get("/status")
        assert status.status_code == 200 and status.json()["searchable"] == 0


def test_a_corrupt_live_index_falls_back_to_the_previous_version(api, gallery, tiny_encoder):
    previous, _ = _live_folder(gallery)
    assert api.post("/admin/reindex").status_code == 202
    assert run_pending(gallery, tiny_encoder) == 1
    pointer, folder = _live_folder(gallery)
    assert pointer != previous
    _scribble(folder / "vectors.npy")
    with _restart(gallery, tiny_encoder) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["index_version"] == previous
        assert f"{pointer} is corrupt" in ready["reason"] and previous in ready["reason"]
        r = client.post("/search", json=QUERY)
        assert r.status_code == 200 and r.json()["index_version"] == previous
        scores = [h["score"] for h in r.json()["hits"]]
        assert len(scores) == 12 and all(np.isfinite(scores))
        assert all(abs(s) <= r.json()["score_max"] + 1e-3 for s in scores)


def test_a_deleted_live_folder_is_not_ready_and_the_next_upload_rebuilds(api, gallery,
                                                                           tiny_encoder,
                                                                           image_bytes):
    assert api.post("/search", json=QUERY).status_code == 200  # its arrays are mapped
    pointer, folder = _live_folder(gallery)
    shutil.rmtree(folder)
    ready = api.get("/readyz")
    assert ready.status_code == 503 and f"{pointer} is missing" in ready.json()["reason"]
    assert api.post("/search", json=QUERY).status_code == 503
    with _restart(gallery, tiny_encoder) as client:  # a start says why, without a traceback
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "missing" in ready.json()["reason"]
        r = client.post("/admin/crops", data=FORM,
                        files=[("files", ("new.png", image_bytes(400), "image/png"))])
        assert r.status_code == 200, r.text
        crop_id, job_id = r.json()["files"][0]["crop_id"], r.json()["job"]["id"]
        assert run_pending(gallery, tiny_encoder) == 1
        with session_scope(gallery.resolved_database_url) as s:
            job = crud.get_job(s, job_id=job_id)
            assert job.status == JobStatus.succeeded, job.message
            assert crud.get_crop(s, crop_id=crop_id).status == CropStatus.indexed
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["index_count"] == 13
        assert client.post("/search", json=QUERY).json()["matching"] == 13


def test_tbps_index_rebuilds_a_deleted_live_version(api, gallery, tiny_encoder):
    pointer, folder = _live_folder(gallery)
    shutil.rmtree(folder)
    backend = backend_from_settings(gallery)
    with session_scope(gallery.resolved_database_url) as s:
        report = index_jobs.sync(s, tiny_encoder, gallery.resolved_crops_dir, backend)
    assert report.full and report.indexed == 12
    assert backend.current_version() != pointer and backend.open().count == 12


def test_tbps_demo_queues_an_add_job_for_a_deleted_live_version(api, gallery):
    shutil.rmtree(_live_folder(gallery)[1])
    with session_scope(gallery.resolved_database_url) as s:
        assert job_needed(s, gallery) == "add"  # the add job rebuilds it
