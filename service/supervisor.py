"""A `tbps worker` subprocess beside the API (TBPS_SPAWN_WORKER), restarted when it dies."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class WorkerSupervisor:
    """Starts the worker and polls it; a worker that exits (crash, OOM kill, kill -9) is
    started again after a backoff that doubles while it keeps dying young, up to 30 s."""

    def __init__(self, command: list[str] | None = None, poll_s: float = 0.5) -> None:
        self.command = command or [sys.executable, "-m", "service.cli", "worker"]
        self.poll_s, self.restarts = poll_s, 0
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor",
                                        daemon=True)

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        log.info("starting a job worker subprocess")
        self.process = subprocess.Popen(self.command)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.wait(self.poll_s):
            code = self.process.poll() if self.process else None
            if code is None:
                continue
            log.error("the job worker (pid %s) exited with %s; restarting in %.0fs",
                      self.process.pid, code, backoff)
            if self._stop.wait(backoff):
                return
            self._spawn()
            self.restarts += 1
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
