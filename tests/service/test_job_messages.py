"""What the admin API shows of a failed job names no absolute path of the server (the log
keeps them)."""

from __future__ import annotations

from service.jobs.worker import run_pending
from service.store import crud
from service.store.db import session_scope


def test_a_failed_jobs_message_carries_no_absolute_path(gallery, tiny_encoder, tmp_path):
    not_a_folder = tmp_path / "index-is-a-file"
    not_a_folder.write_text("in the way")
    broken = gallery.model_copy(update={"index_dir": not_a_folder})
    with session_scope(gallery.resolved_database_url) as s:
        job_id = crud.create_job(s, kind="reindex").id
    assert run_pending(broken, tiny_encoder) == 1
    with session_scope(gallery.resolved_database_url) as s:
        job = crud.get_job(s, job_id=job_id)
    assert job.status.value == "failed" and "[Errno" in job.message
    assert str(tmp_path) not in job.message and "/tmp" not in job.message, job.message
    assert "index-is-a-file" in job.message  # the name still says which one
