"""Job queue: one claim per job on SQLite and PostgreSQL, exclusive reindex, recovery."""

import pytest

from service.store import crud
from service.store.db import session_scope
from service.store.orm import JobStatus


def test_a_job_is_claimed_once(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        ids = [crud.create_job(s, kind="add").id for _ in range(2)]
    with session_scope(url) as a, session_scope(url) as b:
        first, second = crud.claim_next_job(a), crud.claim_next_job(b)
        assert {first.id, second.id} == set(ids)
        assert crud.claim_next_job(a) is None


def test_reindex_is_exclusive_until_finished(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        job = crud.create_job(s, kind="reindex")
    with session_scope(url) as s:
        with pytest.raises(crud.JobConflict) as err:
            crud.create_job(s, kind="reindex")
        assert err.value.job.id == job.id
    with session_scope(url) as s:
        crud.claim_next_job(s)
    with session_scope(url) as s:
        assert crud.fail_abandoned_jobs(s) == 1
    with session_scope(url) as s:
        assert crud.get_job(s, job_id=job.id).status == JobStatus.failed
        assert crud.create_job(s, kind="reindex").id != job.id
