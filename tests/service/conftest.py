"""A served gallery for the API tests: 12 crops over 3 cameras, 4 persons, 12 hours."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.jobs.ingest import ingest_bytes
from service.jobs.worker import run_pending
from service.main import create_app
from service.store.db import get_engine, session_scope
from tests.conftest import backend_settings, empty_postgres, make_image

ADMIN_KEY = "test-admin-key-0123456789"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def admin_settings(migrated_settings):
    return migrated_settings.model_copy(update={"admin_keys": ADMIN_KEY})


def ingest_gallery(settings, image_bytes) -> None:
    """Crop i: camera cam-{i % 3}, captured T0 + i hours, person p{i // 3}."""
    with session_scope(settings.resolved_database_url) as session:
        for i in range(12):
            ingest_bytes(session, settings, name=f"c{i}.png", data=image_bytes(100 + i),
                         camera=f"cam-{i % 3}", captured_at=T0 + timedelta(hours=i),
                         person_id=f"p{i // 3}")


def indexed_client(settings, encoder) -> Iterator[TestClient]:
    """A client on ``settings``' gallery once reindexed, with the admin key in its headers."""
    with TestClient(create_app(settings, encoder=encoder)) as client:
        r = client.post("/admin/reindex", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 202, r.text
        assert run_pending(settings, encoder) == 1
        client.headers["X-API-Key"] = ADMIN_KEY
        yield client


@pytest.fixture
def gallery(admin_settings, image_bytes):
    """The 12 crops of ``ingest_gallery``, fresh for each test (one that changes them)."""
    ingest_gallery(admin_settings, image_bytes)
    return admin_settings


@pytest.fixture
def api(gallery, tiny_encoder):
    """A client on an indexed gallery of the test's own, with the admin key in its headers."""
    yield from indexed_client(gallery, tiny_encoder)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_gallery(request, tmp_path_factory) -> Iterator[Settings]:
    """``gallery`` built once per test module and database, for the tests that only read it
    (search, ranking, pages, refused requests). A test that changes it in any way (crops,
    cameras, index, jobs, app settings or state, client headers) takes ``gallery``/``api``."""
    root = tmp_path_factory.mktemp("shared_gallery")
    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), root / "gallery.sqlite3")
        url = f"sqlite:///{root / 'gallery.sqlite3'}"
    else:
        url = request.getfixturevalue("shared_postgres")
        get_engine.cache_clear()
        empty_postgres(url)
    settings = Settings(data_dir=root / "data", environment="test", device="cpu",
                        database_url=url, admin_keys=ADMIN_KEY, **backend_settings(request))
    settings.ensure_dirs()
    ingest_gallery(settings, make_image)
    yield settings
    if settings.index_backend == "milvus":
        from indexer.backends.milvus_backend import MilvusBackend

        left = MilvusBackend(root=root / "drop", uri=settings.milvus_uri,
                             prefix=settings.milvus_prefix)
        left.drop_all()
        left.close()


@pytest.fixture(scope="module")
def shared_api(shared_gallery, tiny_encoder) -> Iterator[TestClient]:
    """``api`` on the module's ``shared_gallery``: read-only tests only (see there)."""
    yield from indexed_client(shared_gallery, tiny_encoder)


def mount_tmpfs(path, size: str) -> None:
    """A real small file system at ``path`` (skips the test where mounting needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("needs to mount a tmpfs (root) to make a full or read-only crops folder")


@pytest.fixture
def small_crops_dir(tmp_path):
    """A real 64 KiB file system for the crops; remounted read-only or larger by the tests
    that want."""
    path = tmp_path / "smallfs"
    mount_tmpfs(path, "64k")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)
