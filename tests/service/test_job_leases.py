"""Job leases: a dead worker's job is requeued (bounded) or failed; /readyz sees a stuck queue;
a real `tbps worker` killed with SIGKILL mid-job is restarted and the job and the next one run."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from models.factory import create_model, save_checkpoint
from service.jobs.ingest import ingest_bytes
from service.jobs.supervisor import WorkerSupervisor
from service.jobs.worker import reap, recover
from service.store import crud
from service.store.db import session_scope
from service.store.orm import Job, JobStatus, utcnow
from tests.service.waiting import wait_for as _wait


def _status(url: str, job_id: int) -> Job:
    with session_scope(url) as s:
        return crud.get_job(s, job_id=job_id)


def test_an_expired_lease_is_requeued_then_failed_after_max_attempts(migrated_settings):
    settings = migrated_settings.model_copy(update={"job_max_attempts": 2})
    url = settings.resolved_database_url
    with session_scope(url) as s:
        job_id = crud.create_job(s, kind="reindex").id
    for attempt in (1, 2):
        with session_scope(url) as s:
            claimed = crud.claim_next_job(s, lease_s=60, worker="elsewhere:1")
        assert claimed.id == job_id and claimed.attempts == attempt
        assert reap(settings) == (0, 0)  # the lease is still good
        with session_scope(url) as s:
            crud.expire_leases(s, job_ids=[job_id])
        assert reap(settings) == ((1, 0) if attempt == 1 else (0, 1))
    job = _status(url, job_id)
    assert job.status == JobStatus.failed and "stopped 2 times" in job.message
    with session_scope(url) as s:  # the exclusive lock went with it
        assert crud.create_job(s, kind="reindex").id != job_id


def test_a_renewed_lease_is_not_reaped(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        job_id = crud.create_job(s, kind="add").id
    with session_scope(url) as s:
        crud.claim_next_job(s, lease_s=0.5)
    with session_scope(url) as s:
        assert crud.renew_lease(s, job_id=job_id, lease_s=60)
    time.sleep(0.7)
    assert reap(migrated_settings) == (0, 0)
    assert _status(url, job_id).status == JobStatus.running


def test_recover_requeues_at_once_the_job_of_a_dead_local_worker(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        job_id = crud.create_job(s, kind="add").id
    dead_pid = 2**22 + 17  # above the default pid_max: no such process
    with session_scope(url) as s:
        crud.claim_next_job(s, lease_s=600, worker=f"{os.uname().nodename}:{dead_pid}")
    assert recover(migrated_settings) == (1, 0)
    assert _status(url, job_id).status == JobStatus.queued


def test_readyz_reports_a_stuck_queue(api, gallery):
    url = gallery.resolved_database_url
    assert api.get("/readyz").status_code == 200
    with session_scope(url) as s:
        job_id = crud.create_job(s, kind="add").id
    with session_scope(url) as s:
        crud.claim_next_job(s, lease_s=1)
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_until=utcnow() - timedelta(seconds=120)))
    r = api.get("/readyz")
    assert r.status_code == 503 and f"job {job_id}" in r.json()["reason"]
    reap(gallery)  # a worker comes back: the job is queued again, not yet stuck
    assert api.get("/readyz").status_code == 200
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(created_at=utcnow() - timedelta(seconds=3600)))
    r = api.get("/readyz")
    assert r.status_code == 503 and "no worker takes jobs" in r.json()["reason"]


@pytest.fixture
def worker_env(gallery, tmp_path, image_bytes, monkeypatch):
    """A tiny-model checkpoint and the TBPS_ environment a `tbps worker` subprocess reads."""
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, create_model("tiny-clip"))
    with session_scope(gallery.resolved_database_url) as s:
        for i in range(120):  # enough crops that a reindex takes a moment
            ingest_bytes(s, gallery, name=f"x{i}.png", data=image_bytes(500 + i), camera="cam-x")
    for key in [k for k in os.environ if k.startswith("TBPS_")]:
        monkeypatch.delenv(key)
    env = dict(TBPS_DATA_DIR=str(gallery.data_dir), TBPS_DATABASE_URL=gallery.resolved_database_url,
               TBPS_CHECKPOINT=str(ckpt), TBPS_DEVICE="cpu", TBPS_WORKER_POLL_SECONDS="0.2",
               TBPS_JOB_LEASE_SECONDS="2", OMP_NUM_THREADS="1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return gallery


def _stop_mid_job(sup: WorkerSupervisor, url: str) -> int:
    """Queue reindexes until one is caught running; the worker is frozen (SIGSTOP) there, so
    that the kill lands mid-job. Returns the job id."""
    for _ in range(5):
        with session_scope(url) as s:
            job_id = crud.create_job(s, kind="reindex").id
        _wait(lambda job_id=job_id: _status(url, job_id).status != JobStatus.queued, 90,
              "a claim")
        os.kill(sup.process.pid, signal.SIGSTOP)
        if _status(url, job_id).status == JobStatus.running:
            return job_id
        os.kill(sup.process.pid, signal.SIGCONT)
    raise AssertionError("every reindex finished before it could be stopped")


@pytest.mark.slow
def test_kill_9_of_the_worker_mid_job_requeues_it_and_the_next_job_runs(worker_env):
    url = worker_env.resolved_database_url
    sup = WorkerSupervisor([sys.executable, "-m", "service.cli", "worker"], poll_s=0.1).start()
    try:
        job_id = _stop_mid_job(sup, url)
        victim = sup.process.pid
        os.kill(victim, signal.SIGKILL)
        with session_scope(url) as s:
            next_id = crud.create_job(s, kind="add").id
        started = time.monotonic()
        _wait(lambda: sup.process.pid != victim, 10, "the supervisor's restart")
        done = _wait(lambda: _status(url, job_id).status in (JobStatus.succeeded,
                                                             JobStatus.failed), 90, "the job")
        assert done and _status(url, job_id).status == JobStatus.succeeded
        assert _status(url, job_id).attempts == 2
        _wait(lambda: _status(url, next_id).status == JobStatus.succeeded, 30, "the next job")
        assert time.monotonic() - started < 120
    finally:
        sup.stop()
    with session_scope(url) as s:  # what /readyz asks: the queue moves again
        assert crud.queue_problem(s, lease_s=2, stuck_s=60) is None
