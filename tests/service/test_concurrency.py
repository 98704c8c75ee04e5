"""Parallel requests: first uploads naming a new camera, the same file twice at once, the
catalog stamp written from many threads. Each race is forced, not hoped for."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.jobs.ingest import ingest_bytes
from service.search.catalog import read_stamp, touch_stamp
from service.store import crud
from service.store.db import session_scope


def _in_thread(fn):
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(value=_call(fn)))
    thread.start()
    return thread, out


def _call(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - handed to the test thread
        return exc


def test_get_or_create_camera_waits_for_a_parallel_creator(migrated_settings):
    url = migrated_settings.resolved_database_url

    def second() -> int:
        with session_scope(url) as s:
            return crud.get_or_create_camera(s, name="new-cam").id

    with session_scope(url) as first:
        mine = crud.get_or_create_camera(first, name="new-cam").id  # inserted, not committed
        thread, out = _in_thread(second)
        time.sleep(0.5)  # the second one has looked, found nothing and waits on the insert
    thread.join(timeout=30)
    assert out["value"] == mine
    with session_scope(url) as s:
        assert [c.name for c, _ in crud.cameras_with_counts(s)] == ["new-cam"]


def test_the_same_file_uploaded_twice_at_once_is_one_crop_and_one_duplicate(migrated_settings,
                                                                             image_bytes):
    url, data = migrated_settings.resolved_database_url, image_bytes(7)

    def second():
        with session_scope(url) as s:
            return ingest_bytes(s, migrated_settings, name="b.png", data=data, camera="c")

    with session_scope(url) as first:
        mine = ingest_bytes(first, migrated_settings, name="a.png", data=data, camera="c")
        thread, out = _in_thread(second)
        time.sleep(0.5)
    thread.join(timeout=30)
    assert mine.status == "added"
    assert out["value"].status == "duplicate" and out["value"].crop_id == mine.crop_id
    with session_scope(url) as s:
        assert crud.count_crops(s) == 1
    assert (migrated_settings.resolved_crops_dir / crud_path(url, mine.crop_id)).is_file()


def crud_path(url: str, crop_id: int) -> str:
    with session_scope(url) as s:
        return crud.get_crop(s, crop_id=crop_id).stored_path


def test_parallel_uploads_naming_a_new_camera_all_succeed(api, gallery, image_bytes):
    def upload(i: int):
        return api.post("/admin/crops", data={"camera": "brand-new",
                                              "captured_at": "2026-06-01T08:00:00Z"},
                        files=[("files", (f"n{i}.png", image_bytes(900 + i), "image/png"))])

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(upload, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    cams = {c["name"]: c["crop_count"] for c in api.get("/admin/cameras").json()}
    assert cams["brand-new"] == 8
    stored = {p.relative_to(gallery.resolved_crops_dir).as_posix()
              for p in gallery.resolved_crops_dir.rglob("*") if p.is_file()}
    with session_scope(gallery.resolved_database_url) as s:
        assert stored == {c.stored_path for c in crud.indexable_crops(s)}  # no stray file


def test_the_catalog_stamp_can_be_touched_from_many_threads(tmp_path):
    def touch(_):
        for _ in range(50):
            touch_stamp(tmp_path, full=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(touch, range(8)))  # raised FileNotFoundError with one temp name per pid
    assert all(read_stamp(tmp_path))
    assert not list(tmp_path.glob(".*.tmp"))
