"""An upload batch is one transaction on SQLite and PostgreSQL: a batch that fills the disk
part-way, or whose process is killed part-way, leaves nothing behind, and the retry stores
every image; a crop whose file is missing is stored again, never a `duplicate`, and
`tbps index --check` reports it; a file name longer than the column is kept, shortened."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fastapi.testclient import TestClient

from service.jobs.index_backend import backend_from_settings
from service.jobs.index_check import check
from service.jobs.index_records import mark_failed
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus
from tests.service.conftest import ADMIN_KEY

FORM = {"camera": "cam-0", "captured_at": "2026-06-01T08:00:00Z"}  # a camera the gallery has


def _files(batch: dict[str, bytes]) -> list:
    return [("files", (name, data, "image/png")) for name, data in batch.items()]


def _left_of_the_batch(settings) -> tuple[int, int, int]:
    """(crops, upload audit entries, add jobs) in the database."""
    with session_scope(settings.resolved_database_url) as s:
        audits = crud.list_audit(s, limit=100, action="crops.upload")
        jobs = [j for j in crud.list_jobs(s, limit=100) if j.kind == "add"]
        return crud.count_crops(s), len(audits), len(jobs)


def test_a_batch_that_fills_the_disk_part_way_leaves_nothing_and_the_retry_stores_all(
        gallery, tiny_encoder, image_bytes, small_crops_dir):
    settings = gallery.model_copy(update={"crops_dir": small_crops_dir})
    batch = {f"b{i}.png": image_bytes(400 + i, size=(90, 90)) for i in range(6)}  # ~24 KB each
    with TestClient(create_app(settings, encoder=tiny_encoder),
                    headers={"X-API-Key": ADMIN_KEY}) as client:
        r = client.post("/admin/crops", data=FORM, files=_files(batch))
        assert r.status_code == 507, r.text  # the 64 KiB disk takes two of the six
        assert _left_of_the_batch(settings) == (12, 0, 0)
        assert not [p for p in small_crops_dir.rglob("*") if p.is_file()]
        subprocess.run(["mount", "-o", "remount,size=2m", str(small_crops_dir)], check=True)
        r = client.post("/admin/crops", data=FORM, files=_files(batch))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["added"], body["duplicates"]) == (6, 0)
        for outcome in body["files"]:
            image = client.get(f"/crops/{outcome['crop_id']}/image")
            assert image.status_code == 200 and image.content == batch[outcome["name"]]
    assert _left_of_the_batch(settings) == (18, 1, 1)


KILLED_UPLOAD = textwrap.dedent("""
    import os, signal, sys
    from service.api import administration as admin
    from service.config import Settings
    from service.store.db import session_scope

    settings = Settings(data_dir=sys.argv[1], database_url=sys.argv[2], environment="test")
    uploads = [admin.Upload(f"k{i}.png", open(sys.argv[3] + f"/k{i}.png", "rb").read())
               for i in range(6)]

    def killed_at_the_fourth():
        for i, upload in enumerate(uploads):
            if i == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            yield upload

    with session_scope(settings.resolved_database_url) as session:
        admin.upload_crops(session, settings, killed_at_the_fourth(), camera="cam-0",
                           captured_at=None, person_id=None, actor="test")
""")


def test_a_process_killed_mid_batch_commits_nothing_of_it(gallery, image_bytes, tmp_path):
    for i in range(6):
        (tmp_path / f"k{i}.png").write_bytes(image_bytes(500 + i))
    proc = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, str(gallery.data_dir),
                           gallery.resolved_database_url, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert _left_of_the_batch(gallery) == (12, 0, 0)  # no crop without its audit and job


def test_a_crop_whose_file_is_missing_is_stored_again_and_check_reports_it(api, gallery,
                                                                          image_bytes):
    data = image_bytes(600)
    first = api.post("/admin/crops", data=FORM, files=_files({"lost.png": data})).json()
    crop_id = first["files"][0]["crop_id"]
    with session_scope(gallery.resolved_database_url) as s:
        (gallery.resolved_crops_dir / crud.get_crop(s, crop_id=crop_id).stored_path).unlink()
        report = check(s, backend_from_settings(gallery), crops_dir=gallery.resolved_crops_dir,
                       repair=False)
    assert any("1 crops have no file" in p for p in report.problems), report.problems
    with session_scope(gallery.resolved_database_url) as s:  # as indexing it would have
        mark_failed(s, [(crop_id, "unreadable: no such file")])
    again = api.post("/admin/crops", data=FORM, files=_files({"lost.png": data})).json()
    assert again["files"][0] == {"name": "lost.png", "status": "added", "crop_id": crop_id,
                                 "reason": None}
    assert api.get(f"/crops/{crop_id}/image").content == data
    with session_scope(gallery.resolved_database_url) as s:
        assert crud.get_crop(s, crop_id=crop_id).status == CropStatus.pending  # indexed next


def test_a_file_name_over_512_characters_is_kept_shortened_with_its_extension(api, gallery,
                                                                             image_bytes):
    long_name = "x" * 600 + ".png"
    r = api.post("/admin/crops", data=FORM, files=_files({long_name: image_bytes(700),
                                                          "short.png": image_bytes(701)}))
    assert r.status_code == 200, r.text
    assert [f["status"] for f in r.json()["files"]] == ["added", "added"]
    with session_scope(gallery.resolved_database_url) as s:
        stored = crud.get_crop(s, crop_id=r.json()["files"][0]["crop_id"]).original_name
    assert len(stored) == 512 and stored.endswith(".png") and stored.startswith("xxx")
