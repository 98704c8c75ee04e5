"""Shared fixtures: settings on a temporary data dir, a real SQLite or PostgreSQL database
(a throwaway database on 127.0.0.1:5432, created and dropped by the suite), the tiny model,
and small generated images. Nothing here touches ../shared/data.

``TBPS_INDEX_BACKEND=milvus``: settings point at a real Milvus, the one ``TBPS_MILVUS_URI``
names or else the embedded standalone server the session starts, with a collection prefix of
each test's own (dropped after), so every search through the service runs against Milvus.
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, make_url, text

from service.config import Settings
from tests import parallel
from tests.tcp_proxy import TcpProxy

PG_ADMIN_URL = os.environ.get("TBPS_TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def make_image(seed: int, size: tuple[int, int] = (48, 96), fmt: str = "PNG") -> bytes:
    """A small person-shaped crop: a coloured upper and lower half plus noise, as bytes."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    pixels[: h // 2] += rng.integers(0, 190, 3, dtype=np.uint8)
    pixels[h // 2 :] += rng.integers(0, 190, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_bytes():
    return make_image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Six good crops over two cameras, plus a text file and a truncated JPEG."""
    root = tmp_path / "gallery"
    for i in range(6):
        cam = root / ("cam-a" if i < 3 else "cam-b")
        cam.mkdir(parents=True, exist_ok=True)
        (cam / f"p{i}.png").write_bytes(make_image(i))
    (root / "cam-a" / "notes.txt").write_text("not an image")
    (root / "cam-b" / "cut.jpg").write_bytes(make_image(99, fmt="JPEG")[:200])
    return root


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """Create a throwaway PostgreSQL database for the session; drop it afterwards."""
    name = f"tbps_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from service.store.db import get_engine

    get_engine.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    """A fresh, empty database of each kind, not yet migrated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    url = request.getfixturevalue("pg_server_url")
    from service.store.db import get_engine

    get_engine.cache_clear()
    _reset_postgres(url)
    return url


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Milvus: TBPS_MILVUS_URI's, or the embedded standalone server (test extra)."""
    if os.environ.get("TBPS_MILVUS_URI"):
        yield os.environ["TBPS_MILVUS_URI"]
        return
    pytest.importorskip("milvus", reason="the embedded Milvus server (test extra)")
    from indexer.backends.milvus_local import local_milvus

    with local_milvus(tmp_path_factory.mktemp("milvus")) as uri:
        yield uri


@pytest.fixture
def milvus_proxy(milvus_uri: str) -> Iterator[TcpProxy]:
    """The session's Milvus behind a TCP proxy that a test closes (the server is lost) and
    opens again on the same port (it is back); point a backend at ``milvus_proxy.uri``."""
    proxy = TcpProxy(milvus_uri).open()
    yield proxy
    proxy.close()


def milvus_prefix(request: pytest.FixtureRequest) -> str:
    """A collection prefix of this test's own (a valid Milvus name)."""
    return "t" + request.node.name.encode().hex()[:24] + os.urandom(3).hex()


def backend_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings fields for a fixture wider than one test (module or session scope), which the
    autouse environment below does not reach: with TBPS_INDEX_BACKEND=milvus, the session's
    Milvus and a prefix of the fixture's own; else none."""
    if os.environ.get("TBPS_INDEX_BACKEND") != "milvus":
        return {}
    return {"index_backend": "milvus", "milvus_uri": request.getfixturevalue("milvus_uri"),
            "milvus_prefix": milvus_prefix(request)}


@pytest.fixture(autouse=True)
def _milvus_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With TBPS_INDEX_BACKEND=milvus, every Settings() a test makes names the session's
    Milvus and a collection prefix of the test's own."""
    if os.environ.get("TBPS_INDEX_BACKEND") == "milvus":
        monkeypatch.setenv("TBPS_MILVUS_URI", request.getfixturevalue("milvus_uri"))
        monkeypatch.setenv("TBPS_MILVUS_PREFIX", milvus_prefix(request))


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    backend = os.environ.get("TBPS_INDEX_BACKEND", "faiss")
    s = Settings(data_dir=tmp_path / "data", environment="test", device="cpu")
    s.ensure_dirs()
    yield s
    if backend == "milvus":
        from indexer.backends.milvus_backend import MilvusBackend

        left = MilvusBackend(root=tmp_path / "drop", uri=s.milvus_uri,
                             prefix=s.milvus_prefix)
        left.drop_all()
        left.close()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per test run; each test that wants one gets a copy."""
    from service.store.db import migrate

    path = tmp_path_factory.mktemp("migrated") / "migrated.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


def _session_database(pg_server_url: str, suffix: str) -> Iterator[str]:
    """One more PostgreSQL database for the session, dropped at its end. -> its URL."""
    name = make_url(pg_server_url).database + suffix
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_postgres(pg_server_url: str) -> Iterator[str]:
    """A second PostgreSQL database for the session, migrated once; each test that wants a
    migrated database gets it emptied (``empty_postgres``). -> its URL."""
    yield from _session_database(pg_server_url, "_migrated")


@pytest.fixture(scope="session")
def shared_postgres(pg_server_url: str) -> Iterator[str]:
    """A third PostgreSQL database for the session, for the galleries built once per test
    module (tests/service/conftest.py ``shared_gallery``): emptying ``migrated_postgres``
    for a test of the same module must not empty a shared gallery. -> its URL."""
    yield from _session_database(pg_server_url, "_shared")


def empty_postgres(url: str) -> None:
    """Truncate every table (ids restart at 1) when the schema is the migrations' head, else
    drop it and migrate again (a test may drop tables). Other connections left by earlier
    tests are closed first so that no lock of theirs holds the TRUNCATE up."""
    from alembic.script import ScriptDirectory

    from service.store.db import alembic_config, migrate

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        tables = conn.execute(text("SELECT tablename FROM pg_tables "
                                   "WHERE schemaname = 'public'")).scalars().all()
        at_head = "alembic_version" in tables and conn.execute(
            text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
        if at_head:
            names = ", ".join(f'"{t}"' for t in tables if t != "alembic_version")
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    if not at_head:
        migrate(url)


@pytest.fixture
def migrated_settings(settings: Settings, database_url: str,
                      request: pytest.FixtureRequest) -> Settings:
    """Settings on an empty database at the latest migration, migrated once per test run: a
    copy of the SQLite file, or the session's migrated PostgreSQL database truncated
    (tests/service/test_db.py runs the migrations themselves)."""
    if database_url.startswith("sqlite"):
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"),
                        make_url(database_url).database)
        return settings.model_copy(update={"database_url": database_url})
    url = request.getfixturevalue("migrated_postgres")
    empty_postgres(url)
    return settings.model_copy(update={"database_url": url})


@pytest.fixture(scope="session", autouse=True)
def _frozen_heap() -> None:
    """What the collected test modules imported (torch, the service: ~500k objects) frozen
    once for the run: each app a test starts then skips its start-up full collection
    (``service.main._freeze_startup_heap``), ~0.4 s of CPU per app."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def tiny_encoder():
    """The untrained tiny open_clip stand-in, built once (deterministic from its seed)."""
    from models.factory import create_model
    from models.torch_encoder import TorchEncoder

    model = create_model("tiny-clip")
    return TorchEncoder(model, "untrained-tiny-clip-seed0", device="cpu")


def pytest_configure(config: pytest.Config) -> None:
    """On a pytest-xdist worker: one thread (tests/parallel.py)."""
    if parallel.is_worker():
        parallel.one_thread_per_worker()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the PostgreSQL server carries the ``postgres`` marker, every test on the
    embedded Milvus the ``milvus`` marker, so that ``make test-fast`` (``-m "not slow and not
    postgres and not milvus"``) can leave those copies out. On a
    pytest-xdist worker, the files with a slow test come first (tests/parallel.py)."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and "postgres" in (
            params.params.get("database_url"), params.params.get("shared_gallery"))
        if on_postgres or "pg_server_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        on_milvus = params is not None and "milvus" in params.params.values()
        if on_milvus or {"milvus_uri", "milvus_proxy"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.milvus)
    if parallel.is_worker():
        parallel.slow_files_first(items)
