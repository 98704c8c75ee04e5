"""A micro-batching queue: items submitted from many request threads run through one call.

One worker thread takes the first waiting item, then gathers more for at most ``window_s``,
but only while other callers have announced that an item is on its way (``coming()``): a lone
caller never waits for company. Under concurrency the batch also fills by itself while the
previous one runs. ``run`` gets the items in submission order and returns one result per item;
an exception it raises is raised in every caller of that batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Slot(Generic[T, R]):
    """A caller's announced place in the queue; ``submit`` once, from inside ``coming()``."""

    owner: MicroBatcher[T, R]
    used: bool = field(default=False)

    def submit(self, item: T) -> R:
        if self.used:
            raise RuntimeError("a slot takes one item")
        self.used = True
        return self.owner.submit(item, announced=True)


class MicroBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` on batches of at most ``max_batch`` items."""

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch: int = 32,
                 window_s: float = 0.003, name: str = "micro-batcher") -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch must be >= 1 and window_s >= 0")
        self.run, self.max_batch, self.window_s, self.name = run, max_batch, window_s, name
        self._cond = threading.Condition()
        self._queue: deque[tuple[T, Future]] = deque()
        self._expected = 0  # callers inside coming() that have not submitted yet
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = self.items = 0  # counters, for the log and the tests

    @property
    def pending(self) -> int:
        """Items queued and not yet taken into a batch."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def coming(self) -> Iterator[Slot[T, R]]:
        """Announce an item: the worker waits for it (within the window) before running."""
        slot: Slot[T, R] = Slot(self)
        with self._cond:
            self._expected += 1
        try:
            yield slot
        finally:
            if not slot.used:
                with self._cond:
                    self._expected -= 1
                    self._cond.notify_all()

    def submit(self, item: T, *, announced: bool = False) -> R:
        """Queue one item and block until its batch has run; -> its result."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if announced:
                self._expected -= 1
            self._queue.append((item, future))
            self._start()
            self._cond.notify_all()
        return future.result()

    def close(self) -> None:
        """Stop the worker after the items already queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if not batch:
                return
            self._execute(batch)

    def _gather(self) -> list[tuple[T, Future]]:
        """Wait for a first item, then for announced ones until the window closes."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.window_s
            while len(self._queue) < self.max_batch and self._expected > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            take = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(take)]

    def _execute(self, batch: list[tuple[T, Future]]) -> None:
        self.batches, self.items = self.batches + 1, self.items + len(batch)
        try:
            results = self.run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            log.debug("%s: batch of %d failed: %s", self.name, len(batch), exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
