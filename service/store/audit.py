"""Search audit entries, written in batches by a background thread so that a search makes no
database write of its own. Admin actions are audited in their own transaction (crud.add_audit)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from service.store import crud
from service.store.db import session_scope

log = logging.getLogger(__name__)


class AuditBuffer:
    """Collects entries; a daemon thread writes them every ``interval`` seconds in one commit."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    def start(self) -> AuditBuffer:
        self._thread.start()
        return self

    def record(self, **entry: Any) -> None:
        self._queue.put(entry)

    def flush(self) -> int:
        """Write everything recorded so far; returns how many entries."""
        with self._lock:
            entries = []
            while not self._queue.empty():
                entries.append(self._queue.get_nowait())
            if not entries:
                return 0
            try:
                with session_scope(self.url) as session:
                    for entry in entries:
                        crud.add_audit(session, **entry)
            except Exception:  # keep serving; the log says what was lost
                log.exception("could not write %d audit entries", len(entries))
                return 0
            return len(entries)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


class PerClientRate:
    """At most ``per_minute`` events per client in any 60 s (a sliding window): what refused
    requests may write to the audit log, so that an anonymous client cannot fill it. Clients
    are tracked while they have events in the window, ``max_clients`` at most (a new client
    beyond that is over the rate)."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, max_clients: int = 4096) -> None:
        self.per_minute, self.max_clients = per_minute, max_clients
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str | None) -> bool:
        now, key = time.monotonic(), client or ""
        with self._lock:
            events = self._events.get(key)
            if events is None:
                if len(self._events) >= self.max_clients:
                    self._forget_idle(now)
                if len(self._events) >= self.max_clients:
                    return False
                events = self._events[key] = deque(maxlen=self.per_minute)
            if len(events) == self.per_minute and now - events[0] < self.WINDOW_S:
                return False
            events.append(now)
            return True

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, ev in self._events.items() if now - ev[-1] >= self.WINDOW_S]
        for key in idle:
            del self._events[key]
