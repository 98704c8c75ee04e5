"""What a killed build or upload leaves behind: a plain `tbps index` (sync) resumes or cleans
unfinished builds, and `--check` finds (and with repair removes) files that no crop names."""

from __future__ import annotations

import os
import time

import pytest

from indexer.backends.faiss_store import IndexStore
from indexer.jobs import sha_tag
from indexer.pipeline import ReadOptions
from service.jobs.index_check import check
from service.jobs.index_jobs import build_full, sync
from service.jobs.ingest import ingest_folder
from service.store.db import session_scope

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def indexed(migrated_settings, image_folder, tiny_encoder):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, image_folder)
        build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                   options=ReadOptions(workers=0))
    return s


def _check(s, encoder, repair: bool):
    with session_scope(s.resolved_database_url) as session:
        return check(session, s.resolved_index_dir, encoder=encoder,
                     crops_dir=s.resolved_crops_dir, repair=repair)


def test_a_plain_index_resumes_a_killed_build_and_cleans_the_rest(indexed, tiny_encoder):
    versions = IndexStore(indexed.resolved_index_dir).versions
    (versions / f".building-{sha_tag(tiny_encoder)}").mkdir()  # this checkpoint's: resumed
    (versions / ".building-othermodel").mkdir()  # another checkpoint's: removed
    (versions / ".staging-20260101T000000000000Z").mkdir()
    assert not _check(indexed, tiny_encoder, repair=False).ok  # what --dry-run saw, exit 1
    with session_scope(indexed.resolved_database_url) as session:
        report = sync(session, tiny_encoder, indexed.resolved_crops_dir,
                      indexed.resolved_index_dir, options=ReadOptions(workers=0))
    assert report.full and report.indexed == 6
    assert [p.name for p in versions.glob(".*")] == []
    assert _check(indexed, tiny_encoder, repair=False).ok


def test_check_finds_and_removes_files_that_belong_to_no_crop(indexed, tiny_encoder):
    crops = indexed.resolved_crops_dir
    stray = crops / "ab" / "cd" / ("ab" * 32 + ".png")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left by a failed upload")
    young = crops / "ab" / "cd" / "young.png"
    young.write_bytes(b"an upload committing right now")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    report = _check(indexed, tiny_encoder, repair=False)
    assert "1 files in the crops folder belong to no crop" in report.problems
    assert stray.exists()
    report = _check(indexed, tiny_encoder, repair=True)
    assert not stray.exists() and young.exists()
    assert _check(indexed, tiny_encoder, repair=False).ok
    assert len([p for p in crops.rglob("*") if p.is_file()]) == 7  # six crops and the young
