"""Engine, sessions and migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.config import DatabaseLimits
from service.store.deadline import watch_statements

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "migrations"


_limits: dict[str, DatabaseLimits] = {}


def configure(url: str, limits: DatabaseLimits) -> None:
    """The limits of the engine for ``url`` from now on (a changed value makes a new engine)."""
    if _limits.get(url, DatabaseLimits()) != limits:
        _limits[url] = limits
        get_engine.cache_clear()


def make_engine(url: str, limits: DatabaseLimits | None = None) -> Engine:
    limits = limits or DatabaseLimits()
    pool = {"pool_size": limits.pool_size, "max_overflow": limits.max_overflow,
            "pool_timeout": limits.pool_timeout_s}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        in_memory = not path or path == ":memory:"
        if not in_memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **({} if in_memory else pool))
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "before_cursor_execute", _sqlite_begin_before_write)
        return engine
    connect_args: dict[str, object] = {}
    if limits.connect_timeout_s:
        connect_args["connect_timeout"] = max(2, round(limits.connect_timeout_s))
    if limits.statement_timeout_s:
        connect_args["options"] = f"-c statement_timeout={round(limits.statement_timeout_s * 1000)}"
    engine = create_engine(url, pool_pre_ping=not limits.connect_timeout_s,
                           connect_args=connect_args, **pool)
    if limits.connect_timeout_s:  # the pool's ping, and each statement, under a deadline
        watch_statements(engine, ping_s=limits.connect_timeout_s,
                         statement_s=limits.statement_timeout_s)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own (see below)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


SQLITE_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "SAVEPOINT")


def _sqlite_begin_before_write(conn, cursor, statement: str, *_args) -> None:
    """SQLAlchemy's pysqlite recipe ("Serializable isolation / Savepoints / Transactional
    DDL"): pysqlite's own BEGIN is off and we emit it, so that a savepoint nests inside the
    transaction. Left to pysqlite, a SAVEPOINT outside a transaction opened one of its own
    and its RELEASE committed it: each crop of an upload batch committed alone.

    BEGIN is emitted before the transaction's first write (or savepoint), not at its first
    read as the recipe does: a deferred transaction that has read cannot take the write lock
    once another connection has committed (SQLITE_BUSY_SNAPSHOT, "database is locked" at
    once), and the worker reads pending crops, encodes for minutes while its progress writer
    commits, then writes. Reads before the first write run on their own, as with pysqlite's
    default; everything from the first write to the commit is one transaction."""
    driver = conn.connection.driver_connection
    if not driver.in_transaction and statement.lstrip()[:9].upper().startswith(SQLITE_WRITES):
        cursor.execute("BEGIN")


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    return make_engine(url, _limits.get(url))


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def schema_problem(url: str) -> str | None:
    """Why the database is not at the latest schema (message names `tbps migrate`), or None."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with get_engine(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return None
    state = "never migrated" if current is None else f"at revision {current}, not {head}"
    return f"the database is {state}: run `tbps migrate`"
