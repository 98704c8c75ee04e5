"""Search audit entries, written in batches by a background thread so that a search makes no
database write of its own. Admin actions are audited in their own transaction (crud.add_audit)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from service import crud
from service.db import session_scope

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
