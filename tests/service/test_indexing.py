"""Indexing state for the page and /readyz (GET /status), the job the demo queues, and the
demo gallery's person ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from service.config import DEFAULT_DEMO_GALLERY, REPO_ROOT, Settings
from service.jobs.indexing import (
    ENCODING_SHARE,
    describe,
    gallery_state,
    job_needed,
    queue_index_job,
)
from service.jobs.ingest import ingest_folder, read_person_ids
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from tests.service.conftest import ADMIN_KEY

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_demo_gallery_is_found_from_the_repository_not_the_working_directory(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (REPO_ROOT / "service" / "config.py").is_file()
    assert DEFAULT_DEMO_GALLERY == REPO_ROOT.parent / "shared/data/cuhk-pedes/imgs"
    assert DEFAULT_DEMO_GALLERY.is_absolute()


@sqlite_only
def test_status_and_readyz_follow_the_first_index_job(gallery, tiny_encoder):
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        assert client.get("/status").json()["indexing"] is None
        with session_scope(gallery.resolved_database_url) as session:
            job = queue_index_job(session, gallery, created_by="test")
            assert job.kind == "add"
            assert queue_index_job(session, gallery, created_by="test").id == job.id  # no twin
        status = client.get("/status").json()
        assert status["crops"] == status["pending"] == 12 and status["searchable"] == 0
        assert status["indexing"]["status"] == "queued"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "queued" in ready.json()["reason"]

        with session_scope(gallery.resolved_database_url) as session:
            claimed = crud.claim_next_job(session)
            claimed.started_at = datetime.now(UTC) - timedelta(seconds=30)
            crud.set_job_progress(session, job_id=claimed.id, progress=0.25, message="x")
        indexing = client.get("/status").json()["indexing"]
        assert indexing["status"] == "running" and 85 <= indexing["eta_s"] <= 95  # 30 s for 1/4
        assert indexing["summary"].startswith("indexing: 25% done, ETA")
        assert indexing["summary"].endswith("; 0 of 12 crops indexed")
        assert indexing["progress"] == 0.25
        assert not indexing["more_queued"]
        with session_scope(gallery.resolved_database_url) as session:  # crops came meanwhile
            follow_up = queue_index_job(session, gallery, created_by="test")
            assert follow_up.id != claimed.id and follow_up.status.value == "queued"
        indexing = client.get("/status").json()["indexing"]
        assert indexing["job_id"] == claimed.id and indexing["more_queued"]
        assert "for this job (more crops are queued after it)" in indexing["summary"]
        with session_scope(gallery.resolved_database_url) as session:
            crud.finish_job(session, job_id=follow_up.id, ok=False, message="stopped")
        with session_scope(gallery.resolved_database_url) as session:
            crud.finish_job(session, job_id=claimed.id, ok=False, message="stopped")

        with session_scope(gallery.resolved_database_url) as session:
            queue_index_job(session, gallery, created_by="test")
        assert run_pending(gallery, tiny_encoder) == 1
        status = client.get("/status").json()
        assert (status["indexed"], status["searchable"], status["indexing"]) == (12, 12, None)
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["indexing"] is None


def test_status_counts_the_crops_a_full_reindex_has_encoded(gallery, tiny_encoder):
    headers = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(gallery, encoder=tiny_encoder), headers=headers) as client:
        job_id = client.post("/admin/reindex").json()["id"]
        with session_scope(gallery.resolved_database_url) as session:
            assert crud.claim_next_job(session).id == job_id
        for encoded in (0, 3, 12):
            with session_scope(gallery.resolved_database_url) as session:
                crud.set_job_progress(session, job_id=job_id, message="encoding",
                                      progress=encoded / 12 * ENCODING_SHARE)
            indexing = client.get("/status").json()["indexing"]
            assert (indexing["kind"], indexing["done"], indexing["total"]) == (
                "reindex", encoded, 12)
            assert indexing["summary"].endswith(f"; {encoded} of 12 crops indexed")


@sqlite_only
def test_job_needed_names_the_job_that_brings_the_index_up_to_date(gallery, tiny_encoder):
    with session_scope(gallery.resolved_database_url) as session:
        assert job_needed(session, gallery) == "add"  # no index yet
        queue_index_job(session, gallery, created_by="test")
    run_pending(gallery, tiny_encoder)
    with session_scope(gallery.resolved_database_url) as session:
        # built by the tiny stand-in, while the settings name the bundled checkpoint
        assert job_needed(session, gallery) == "reindex"
        assert gallery_state(session).indexed == 12


@sqlite_only
def test_empty_gallery_needs_no_job(migrated_settings):
    with session_scope(migrated_settings.resolved_database_url) as session:
        assert job_needed(session, migrated_settings) is None
        assert queue_index_job(session, migrated_settings, created_by="test") is None
        assert gallery_state(session).crops == 0


def test_describe_says_one_percentage_one_eta_and_n_of_n():
    from service.jobs.indexing import IndexingState

    running = IndexingState(1, "add", "running", 1024, 4527, 190.4, None, progress=0.226)
    assert describe(running) == "indexing: 23% done, ETA 190 s; 1024 of 4527 crops indexed"
    assert describe(IndexingState(1, "add", "running", 0, 10, None, None)) == \
        "indexing: 0% done; 0 of 10 crops indexed"


@sqlite_only
def test_person_ids_come_from_the_dataset_annotations(migrated_settings, image_folder,
                                                      tmp_path):
    labels = tmp_path / "reid_raw.json"
    labels.write_text(json.dumps([{"id": 7, "file_path": "cam-a/p0.png", "captions": []},
                                  {"id": 8, "file_path": "cam-b/p3.png"},
                                  {"file_path": "cam-b/p4.png"}]))
    persons = read_person_ids(labels)
    assert persons == {"cam-a/p0.png": "7", "cam-b/p3.png": "8"}
    with session_scope(migrated_settings.resolved_database_url) as session:
        ingest_folder(session, migrated_settings, image_folder, persons=persons)
        by_name = {c.original_name: c.person_id for c in
                   crud.crops_by_ids(session, ids=range(1, 7)).values()}
    assert by_name["cam-a/p0.png"] == "7" and by_name["cam-b/p3.png"] == "8"
    assert by_name["cam-b/p4.png"] is None


def test_person_ids_refuse_a_file_that_is_not_a_list(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_person_ids(bad)


def test_audit_setting_accepts_the_old_booleans_and_refuses_nonsense():
    from pydantic import ValidationError

    assert Settings(audit_searches=True).audit_searches == "all"
    assert Settings(audit_searches="false").audit_searches == "off"
    assert Settings().audit_searches == "keyed"
    with pytest.raises(ValidationError):
        Settings(audit_searches="sometimes")
