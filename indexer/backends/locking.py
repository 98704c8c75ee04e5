"""The build lock every backend can use: a POSIX record lock on a file in its work folder; and
a lock file any process waits its turn on."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.backends.base import BuildBusy

_THREAD_LOCK = threading.Lock()


@contextmanager
def build_lock(work_dir: Path) -> Iterator[None]:
    """One full build at a time per work folder (non-blocking: raises ``BuildBusy``).

    A POSIX record lock (``lockf``), not ``flock``: it is not inherited by the reader's forked
    worker processes, so a killed build releases it at once even while they wind down.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not _THREAD_LOCK.acquire(blocking=False):
        raise BuildBusy("another index build is running in this process")
    try:
        with (work_dir / "BUILD_LOCK").open("a") as fh:
            try:
                fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise BuildBusy(f"another index build is running on {work_dir}") from None
            try:
                yield
            finally:
                fcntl.lockf(fh.fileno(), fcntl.LOCK_UN)
    finally:
        _THREAD_LOCK.release()


@contextmanager
def waiting_turn(path: Path) -> Iterator[None]:
    """Held by one process at a time (an ``flock`` on ``path``); the others wait for it."""
    with Path(path).open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
