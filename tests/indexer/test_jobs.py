import numpy as np
import pytest
from PIL import Image

from indexer import jobs
from indexer.backends.base import split_pointer
from indexer.backends.faiss_store import IndexStore
from indexer.pipeline import ReadOptions
from service.jobs.index_check import check
from service.jobs.index_jobs import add_crops, build_full, remove_crops, rollback, sync
from service.jobs.ingest import ingest_folder
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus
from tests.conftest import make_image

FAST = ReadOptions(batch_size=4, workers=0)
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _add_images(folder, seeds):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"extra{seed}.png").write_bytes(make_image(seed))
    return folder


def _ingest(s, folder):
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, folder)


def _vector_of(s, encoder, crop_id):
    with session_scope(s.resolved_database_url) as session:
        path = s.resolved_crops_dir / crud.get_crop(session, crop_id=crop_id).stored_path
    return encoder.encode_image([Image.open(path)])


@pytest.fixture
def built(migrated_settings, image_folder, tiny_encoder):
    """Six crops ingested and indexed."""
    s = migrated_settings
    _ingest(s, image_folder)
    with session_scope(s.resolved_database_url) as session:
        build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                   options=FAST)
    return s


def test_build_full_indexes_every_crop_and_marks_unreadable_ones(migrated_settings, image_folder,
                                                                 tiny_encoder):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, image_folder)
        broken = crud.get_crop(session, crop_id=2)
        (s.resolved_crops_dir / broken.stored_path).write_bytes(b"\x89PNG gone")
        (s.resolved_crops_dir / crud.get_crop(session, crop_id=4).stored_path).write_bytes(b"")
    with session_scope(s.resolved_database_url) as session:
        report = build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir)
    assert report.indexed == 4 and sorted(cid for cid, _ in report.failed) == [2, 4]
    live = IndexStore(s.resolved_index_dir).load()
    assert live.count == 4
    assert live.manifest.checkpoint_sha256 == tiny_encoder.spec.checkpoint_sha256
    with session_scope(s.resolved_database_url) as session:
        assert crud.get_crop(session, crop_id=2).status == CropStatus.failed
        assert "unreadable" in crud.get_crop(session, crop_id=2).error
        assert crud.get_crop(session, crop_id=4).error == "empty file"
        assert crud.count_crops(session, statuses=[CropStatus.indexed]) == 4
        assert crud.live_index_version(session).version == live.version
    # the stored vector of crop 1 is what the encoder gives for its file (float16 storage)
    expect = _vector_of(s, tiny_encoder, 1)[0]
    np.testing.assert_allclose(live.vectors([1])[0], expect, atol=2e-3)


@sqlite_only
def test_added_crops_are_searchable_without_rebuild(built, tmp_path, tiny_encoder):
    s = built
    store = IndexStore(s.resolved_index_dir)
    before = store.current_version()
    _ingest(s, _add_images(tmp_path / "more", [40, 41]))
    with session_scope(s.resolved_database_url) as session:
        report = add_crops(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                           [7, 8])
        assert crud.get_crop(session, crop_id=7).status == CropStatus.indexed
    after = store.current_version()
    assert report.indexed == 2 and split_pointer(after) == (split_pointer(before)[0], 1)
    live = store.load()
    assert live.count == 8
    _, ids = live.search(_vector_of(s, tiny_encoder, 8), 1)
    assert ids[0, 0] == 8


@sqlite_only
def test_removed_crops_vanish_at_once(built, tiny_encoder):
    s = built
    query = _vector_of(s, tiny_encoder, 3)
    remove_crops(s.resolved_index_dir, [3])
    live = IndexStore(s.resolved_index_dir).load()
    _, ids = live.search(query, 10)
    assert 3 not in ids and live.count == 5
    _, ids = live.search(query, 10, allowed_ids=np.array([3, 4]))
    assert list(ids[0]) == [4] + [-1] * 9


@sqlite_only
def test_sync_adds_pending_and_drops_deleted(built, tmp_path, tiny_encoder):
    s = built
    _ingest(s, _add_images(tmp_path / "more", [50]))
    with session_scope(s.resolved_database_url) as session:
        crud.get_crop(session, crop_id=2).status = CropStatus.deleted
    with session_scope(s.resolved_database_url) as session:
        report = sync(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir)
    assert (report.full, report.indexed, report.removed) == (False, 1, 1)
    live = IndexStore(s.resolved_index_dir).load()
    assert list(live.live_ids()) == [1, 3, 4, 5, 6, 7]


@sqlite_only
def test_full_rebuild_swaps_and_rollback_restores(built, tmp_path, tiny_encoder):
    s = built
    store = IndexStore(s.resolved_index_dir)
    first = store.current_version()
    _ingest(s, _add_images(tmp_path / "more", [60, 61]))
    with session_scope(s.resolved_database_url) as session:
        report = build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                            options=FAST)
    assert report.indexed == 8 and store.previous_version() == first
    with session_scope(s.resolved_database_url) as session:
        crud.get_crop(session, crop_id=1).status = CropStatus.deleted
    remove_crops(s.resolved_index_dir, [1])
    with session_scope(s.resolved_database_url) as session:
        pointer = rollback(session, s.resolved_index_dir)
        assert split_pointer(pointer)[0] == first
        assert crud.live_index_version(session).version == first
        assert crud.get_crop(session, crop_id=7).status == CropStatus.pending
    live = store.load()
    assert list(live.live_ids()) == [2, 3, 4, 5, 6]  # deleted crop 1 stays gone
    with session_scope(s.resolved_database_url) as session:
        sync(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir)
    assert list(store.load().live_ids()) == [2, 3, 4, 5, 6, 7, 8]


def test_check_finds_and_repairs_disagreements(built, tmp_path, tiny_encoder):
    s = built
    root = s.resolved_index_dir
    _ingest(s, _add_images(tmp_path / "more", [70]))  # pending, not in the index
    with session_scope(s.resolved_database_url) as session:
        crud.get_crop(session, crop_id=2).status = CropStatus.deleted  # still in the index
        crud.get_crop(session, crop_id=3).status = CropStatus.pending  # in the index
    (root / "versions" / ".staging-20990101T000000000000Z").mkdir()  # a killed write
    with session_scope(s.resolved_database_url) as session:
        report = check(session, root, encoder=tiny_encoder, crops_dir=s.resolved_crops_dir,
                       repair=False)
    assert len(report.problems) == 4 and not report.repaired
    with session_scope(s.resolved_database_url) as session:
        report = check(session, root, encoder=tiny_encoder, crops_dir=s.resolved_crops_dir)
    assert len(report.repaired) == 4
    with session_scope(s.resolved_database_url) as session:
        again = check(session, root, encoder=tiny_encoder, crops_dir=s.resolved_crops_dir)
        assert crud.get_crop(session, crop_id=3).status == CropStatus.indexed
    assert again.ok, again.problems
    assert list(IndexStore(root).load().live_ids()) == [1, 3, 4, 5, 6, 7]


@sqlite_only
def test_check_rebuilds_an_index_of_another_model(built, tiny_encoder):
    s = built

    class Other:
        spec = tiny_encoder.spec.__class__(**{**tiny_encoder.spec.__dict__,
                                              "checkpoint_sha256": "another"})
        preprocess, encode_image = tiny_encoder.preprocess, tiny_encoder.encode_image
        device = tiny_encoder.device

    with session_scope(s.resolved_database_url) as session:
        report = check(session, s.resolved_index_dir, encoder=Other(),
                       crops_dir=s.resolved_crops_dir)
    assert "another checkpoint" in report.problems[0] and "full index" in report.repaired[0]
    assert IndexStore(s.resolved_index_dir).load().manifest.checkpoint_sha256 == "another"
    with pytest.raises(jobs.StaleIndex):
        with session_scope(s.resolved_database_url) as session:
            add_crops(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir, [1])


def test_chunk_bounds_start_small_and_double_up_to_the_largest():
    assert jobs.chunk_bounds(0) == []
    assert jobs.chunk_bounds(10, first=4, largest=8) == [(0, 4), (4, 10)]
    assert jobs.chunk_bounds(40, first=4, largest=8) == [(0, 4), (4, 12), (12, 20), (20, 28),
                                                         (28, 36), (36, 40)]
    sizes = [hi - lo for lo, hi in jobs.chunk_bounds(4527)]
    assert sizes[0] == jobs.FIRST_CHUNK and max(sizes) == jobs.ADD_CHUNK and sum(sizes) == 4527


@sqlite_only
def test_first_build_is_searchable_from_its_first_chunk(migrated_settings, tmp_path,
                                                        tiny_encoder):
    """40 crops: the first 32 are live (and marked indexed) while the last 8 encode, and
    progress is reported after every batch, from the first one on."""
    s = migrated_settings
    _ingest(s, _add_images(tmp_path / "many", range(200, 240)))
    store, seen = IndexStore(s.resolved_index_dir), []

    def progress(done, total):
        live = store.load()
        with session_scope(s.resolved_database_url) as session:
            indexed = crud.count_crops(session, statuses=[CropStatus.indexed])
        seen.append((done, total, live.count if live else 0, indexed))

    with session_scope(s.resolved_database_url) as session:
        report = add_crops(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                           [], progress=progress, options=FAST)
    assert seen[0] == (0, 40, 0, 0) and seen[1][:3] == (4, 40, 0)  # the first batch, no index
    assert (36, 40, 32, 32) in seen and seen[-1][:2] == (40, 40)
    assert report.full and report.indexed == 40
    assert split_pointer(store.current_version())[1] == 1  # a base of 32, one generation of 8
    with session_scope(s.resolved_database_url) as session:
        assert crud.live_index_version(session).count == 40


@sqlite_only
def test_first_build_keeps_what_a_killed_run_published(migrated_settings, tmp_path,
                                                       tiny_encoder):
    s = migrated_settings
    _ingest(s, _add_images(tmp_path / "many", range(300, 340)))

    def killed(done, total):
        if done > 32:
            raise KeyboardInterrupt

    with session_scope(s.resolved_database_url) as session, pytest.raises(KeyboardInterrupt):
        add_crops(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir, [],
                  progress=killed, options=FAST)
    assert IndexStore(s.resolved_index_dir).load().count == 32
    with session_scope(s.resolved_database_url) as session:
        report = sync(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir,
                      options=FAST)
    assert (report.full, report.indexed) == (False, 8)
    assert IndexStore(s.resolved_index_dir).load().count == 40
