"""Waiting in tests for something another process or thread does."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, poll_s: float = 0.01):
    """The first truthy value of ``predicate()``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
