from service.jobs.ingest import ingest_bytes, ingest_folder
from service.store import crud
from service.store.db import session_scope


def test_ingest_folder_stores_skips_and_reports(migrated_settings, image_folder):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        report = ingest_folder(session, s, image_folder)
    assert report.added == 6 and report.duplicates == 0
    assert sorted(r.name for r in report.rejected) == ["cam-a/notes.txt", "cam-b/cut.jpg"]
    assert all(r.reason for r in report.rejected)
    stored = list(s.resolved_crops_dir.rglob("*.png"))
    assert len(stored) == 6
    with session_scope(s.resolved_database_url) as session:
        assert crud.count_crops(session) == 6
        cams = {c.camera.name for c in crud.crops_by_ids(session, ids=range(1, 7)).values()}
    assert cams == {"cam-a", "cam-b"}


def test_ingest_again_finds_duplicates_and_stores_nothing_new(migrated_settings, image_folder):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, image_folder, camera="lobby")
    with session_scope(s.resolved_database_url) as session:
        again = ingest_folder(session, s, image_folder, camera="lobby")
        assert (again.added, again.duplicates) == (0, 6)
        assert crud.count_crops(session) == 6


def test_rejected_bytes_are_not_stored(migrated_settings):
    s = migrated_settings
    with session_scope(s.resolved_database_url) as session:
        result = ingest_bytes(session, s, name="x.jpg", data=b"\xff\xd8garbage", camera="c")
        assert result.status == "rejected" and "image" in result.reason
        assert crud.count_crops(session) == 0
    assert not any(s.resolved_crops_dir.rglob("*.*"))


def test_tbps_ingest_on_a_full_disk_prints_one_line(tmp_path, monkeypatch, capsys,
                                                    small_crops_dir):
    from service.cli.main import main
    from service.config import get_settings
    from tests.conftest import make_image

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(6):  # ~24 KB each: the 64 KiB crops disk takes two
        (folder / f"b{i}.png").write_bytes(make_image(800 + i, size=(90, 90)))
    monkeypatch.setenv("TBPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TBPS_CROPS_DIR", str(small_crops_dir))
    get_settings.cache_clear()
    try:
        code = main(["ingest", str(folder), "--camera", "cam-a"])
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: could not store the crop: the disk is full")
