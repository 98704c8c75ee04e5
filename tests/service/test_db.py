"""Migrations and data access, against SQLite and the local PostgreSQL."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from service.store import crud
from service.store.db import alembic_config, get_engine, migrate, session_scope
from service.store.orm import Base, CropStatus


def test_migrations_create_the_schema_the_models_describe(database_url):
    migrate(database_url)
    tables = set(inspect(get_engine(database_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_migrations_match_models(database_url):
    """Autogenerate finds nothing to do: the migration and the ORM agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    migrate(database_url)
    with get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(database_url):
    from alembic import command

    migrate(database_url)
    command.downgrade(alembic_config(database_url), "base")
    assert "crops" not in inspect(get_engine(database_url)).get_table_names()
    migrate(database_url)
    assert "crops" in inspect(get_engine(database_url)).get_table_names()


def _add(session, sha, camera=None, when=None):
    return crud.add_crop(session, sha256=sha, stored_path=f"{sha}.png", width=10, height=20,
                         camera=camera, captured_at=when, person_id="p1", original_name=None)


def test_crud_round_trip(migrated_settings):
    url = migrated_settings.resolved_database_url
    when = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    with session_scope(url) as s:
        cam = crud.get_or_create_camera(s, name="gate-1")
        assert crud.get_or_create_camera(s, name="gate-1").id == cam.id
        a, b = _add(s, "a" * 64, cam, when), _add(s, "b" * 64)
        ids = [a.id, b.id]
    with session_scope(url) as s:
        rows = crud.crops_by_ids(s, ids=ids + [999])
        assert set(rows) == set(ids)
        assert rows[ids[0]].camera.name == "gate-1"
        assert rows[ids[0]].captured_at.replace(tzinfo=UTC) == when
        assert rows[ids[0]].status == CropStatus.pending
        assert crud.get_crop_by_sha(s, sha256="b" * 64).id == ids[1]
        assert crud.count_crops(s) == 2
        assert crud.count_crops(s, statuses=[CropStatus.indexed]) == 0


def test_duplicate_hash_is_refused_by_the_database(migrated_settings):
    url = migrated_settings.resolved_database_url
    with session_scope(url) as s:
        _add(s, "c" * 64)
    with session_scope(url) as s:  # the unique index refuses it; crud names the crop it hit
        with pytest.raises(crud.DuplicateCrop) as dup:
            _add(s, "c" * 64)
        assert dup.value.crop.sha256 == "c" * 64
    with session_scope(url) as s:
        assert crud.count_crops(s) == 1
