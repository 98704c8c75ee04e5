"""A `tbps worker` subprocess beside the API (TBPS_SPAWN_WORKER), restarted when it dies, and
never outliving the API (kill -9 included): on Linux the kernel kills it when the API dies
(PR_SET_PDEATHSIG, asked for in the child before it runs the worker), and everywhere the
worker watches its parent itself (``--parent-pid``: ``service.jobs.worker.die_with_parent``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when this process dies (the
    child's imports take seconds: a kill then must not orphan it either); None off Linux.
    It runs in the forked child before exec: no locks, no allocation beyond the call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(70)

    return arm


def worker_command() -> list[str]:
    """``tbps worker`` bound to this process: it exits when this process is gone."""
    return [sys.executable, "-m", "service.cli", "worker", "--parent-pid", str(os.getpid())]


class WorkerSupervisor:
    """Starts the worker and polls it; a worker that exits (crash, OOM kill, kill -9) is
    started again after a backoff that doubles while it keeps dying young, up to 30 s.

    One thread spawns every worker and stops the last one before it ends: the kernel's
    parent-death signal follows the thread that forked the child, so the child must not
    outlive its spawning thread while the process lives on."""

    def __init__(self, command: list[str] | None = None, poll_s: float = 0.5) -> None:
        self.command = command or worker_command()
        self.poll_s, self.restarts = poll_s, 0
        self.process: subprocess.Popen | None = None
        self.stop_timeout = 30.0
        self._stop = threading.Event()
        self._spawned = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor",
                                        daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        self._spawned.wait(timeout=30)
        return self

    def _spawn(self) -> None:
        log.info("starting a job worker subprocess")
        self.process = subprocess.Popen(self.command, preexec_fn=death_signal_setter())

    def _watch(self) -> None:
        try:
            self._spawn()
        finally:
            self._spawned.set()
        try:
            self._poll()
        finally:
            self._end_worker()

    def _poll(self) -> None:
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

    def _end_worker(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop supervising and end the worker (SIGTERM, then SIGKILL after ``timeout``)."""
        self.stop_timeout = timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout + 15)
