"""A client-side deadline for PostgreSQL calls.

A server that accepts and never answers (stopped, frozen, behind a stuck proxy or load
balancer) leaves the client waiting on a socket that no libpq or kernel timeout ends: the
peer's kernel acknowledges every byte, so TCP keepalives and ``tcp_user_timeout`` see nothing
wrong, and a server-side ``statement_timeout`` never runs. A watchdog thread shuts such a
socket down when the call on it outlives its deadline: the waiting call fails at once with a
disconnect error, SQLAlchemy discards the connection, and the request is answered 503 (a
``OperationalError``). Armed around each statement and around the pool's ping at checkout
(which replaces ``pool_pre_ping``: SQLAlchemy's own ping has no hook to arm it); a broken
ping discards the connection and the pool connects a new one (``connect_timeout``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

log = logging.getLogger(__name__)


class Watchdog:
    """Cuts the socket of a DBAPI connection whose armed call is still running at its deadline.
    One call per connection at a time (a connection is used by one thread at a time)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, object]] = {}  # id(conn) -> (deadline, conn)
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections cut, for the log and the tests

    def arm(self, conn: object, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            was_idle = not self._armed
            self._armed[id(conn)] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-deadline",
                                                daemon=True)
                self._thread.start()
            if was_idle:  # deadlines all have the same length: only a first one is nearer
                self._cond.notify()

    def disarm(self, conn: object) -> None:
        with self._cond:
            self._armed.pop(id(conn), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key in [k for k, (d, _) in self._armed.items() if d <= now]:
                    _, conn = self._armed.pop(key)
                    self.cut += 1
                    _shut_socket(conn)  # under the lock: the call cannot end and be reused
                nearest = min((d for d, _ in self._armed.values()), default=None)
                self._cond.wait(None if nearest is None else max(nearest - now, 0.001))


def _shut_socket(conn: object) -> None:
    """Shut down the connection's socket (a duplicate of its descriptor: the driver still owns
    and closes the original); its blocked read returns end-of-file at once."""
    try:
        fd = conn.pgconn.socket  # psycopg 3: the libpq connection's socket
    except Exception:  # noqa: BLE001 - closed already, or not psycopg: nothing to cut
        return
    log.warning("a database call ran past its deadline: cutting its connection (the database "
                "does not answer)")
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def watch_statements(engine: Engine, *, ping_s: float, statement_s: float | None) -> Watchdog:
    """Arm a watchdog around the checkout ping (``ping_s``) and each statement
    (``statement_s``; None: statements are not watched) of ``engine``'s connections."""
    dog = Watchdog()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, _record, _proxy) -> None:
        dog.arm(dbapi_conn, ping_s)
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool discards it and connects a new one
            raise DisconnectionError(f"the database did not answer a ping: {exc}") from exc
        finally:
            dog.disarm(dbapi_conn)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn, _record) -> None:
        dog.disarm(dbapi_conn)

    if statement_s:
        @event.listens_for(engine, "before_cursor_execute")
        def _before(_conn, cursor, *_args) -> None:
            dog.arm(cursor.connection, statement_s)

        @event.listens_for(engine, "after_cursor_execute")
        def _after(_conn, cursor, *_args) -> None:
            dog.disarm(cursor.connection)

        @event.listens_for(engine, "handle_error")
        def _failed(context) -> None:
            # the execution context's cursor: this SQLAlchemy leaves ``context.cursor`` unset
            cursor = getattr(context.execution_context, "cursor", None)
            if cursor is not None:
                dog.disarm(cursor.connection)
    return dog
