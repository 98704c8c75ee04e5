"""A served gallery for the API tests: 12 crops over 3 cameras, 4 persons, 12 hours."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from service.db import session_scope
from service.ingest import ingest_bytes
from service.main import create_app
from service.worker import run_pending

ADMIN_KEY = "test-admin-key-0123456789"
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def admin_settings(migrated_settings):
    return migrated_settings.model_copy(update={"admin_keys": ADMIN_KEY})


@pytest.fixture
def gallery(admin_settings, image_bytes):
    """Crop i: camera cam-{i % 3}, captured T0 + i hours, person p{i // 3}."""
    with session_scope(admin_settings.resolved_database_url) as session:
        for i in range(12):
            ingest_bytes(session, admin_settings, name=f"c{i}.png", data=image_bytes(100 + i),
                         camera=f"cam-{i % 3}", captured_at=T0 + timedelta(hours=i),
                         person_id=f"p{i // 3}")
    return admin_settings


@pytest.fixture
def api(gallery, tiny_encoder):
    """A client on an indexed gallery, with the admin key in its headers."""
    with TestClient(create_app(gallery, encoder=tiny_encoder)) as client:
        r = client.post("/admin/reindex", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 202, r.text
        assert run_pending(gallery, tiny_encoder) == 1
        client.headers["X-API-Key"] = ADMIN_KEY
        yield client


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
