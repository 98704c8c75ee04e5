"""Calls to the Milvus server under a deadline, a lost server told apart from a bad request.

Every call of the Milvus backend and its views goes through ``GuardedClient``. It passes the
backend's ``timeout`` (TBPS_MILVUS_TIMEOUT) to each RPC, so that a dead or silent server fails
within it instead of hanging (the ``timeout`` given to ``MilvusClient`` bounds only its
connect), and it turns a failure to reach the server into ``BackendUnavailable``. Genuine
errors (a bad filter expression, a missing collection) stay the ``MilvusException`` they are.

Nothing about the server's state is kept here: pymilvus's connection manager re-creates the
channel on the next call once the server answers again.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from pymilvus import MilvusException, MilvusUnavailableException
from pymilvus.exceptions import ConnectError

from indexer.backends.base import BackendUnavailable

# gRPC statuses of a server that is gone or does not answer in time (pymilvus also puts them in
# a MilvusException's ``code`` when its retries run out)
UNREACHABLE_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CONNECT_FAILED = 2  # pymilvus Status.CONNECT_FAILED, and Milvus's "service unavailable"
NOT_READY = frozenset({56, 57})  # legacy error codes NotReadyServe, NotReadyCoordActivating
REASON_MAX = 300  # characters of the underlying error kept in the message


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, says the server cannot be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # pymilvus raises `e from e`
        if _connection_failure(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, grpc.FutureTimeoutError,
                        MilvusUnavailableException, ConnectError)):
        return True
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return exc.code() in UNREACHABLE_STATUSES
    if isinstance(exc, MilvusException):
        return (exc.code in UNREACHABLE_STATUSES or exc.code == CONNECT_FAILED
                or exc.compatible_code in NOT_READY)
    return False


def unreachable_message(uri: str, exc: BaseException) -> str:
    """``the index backend (Milvus at <uri>) is unreachable: <the error, shortened>``."""
    reason = exc.message if isinstance(exc, MilvusException) else str(exc)
    reason = (reason or type(exc).__name__)[:REASON_MAX]
    return f"the index backend (Milvus at {uri}) is unreachable: {reason}"


class GuardedClient:
    """A ``MilvusClient`` whose calls run under ``timeout`` seconds and raise
    ``BackendUnavailable`` when the server cannot be reached; anything else is its own."""

    def __init__(self, client: Any, *, uri: str, timeout: float) -> None:
        self.client = client
        self.uri = uri
        self.timeout = timeout

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        return self._guarded(attr)

    def _guarded(self, method: Callable[..., Any]) -> Callable[..., Any]:
        takes_timeout = "timeout" in inspect.signature(method).parameters

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            if takes_timeout:
                kwargs.setdefault("timeout", self.timeout)
            with self.reachable():
                return method(*args, **kwargs)

        return call

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """Connection failures inside become ``BackendUnavailable`` naming the server (for
        objects the client returns that call it later, such as a query iterator)."""
        try:
            yield
        except BackendUnavailable:
            raise
        except Exception as exc:
            if not unreachable(exc):
                raise
            raise BackendUnavailable(f"{unreachable_message(self.uri, exc)}; check the server "
                                     "or TBPS_MILVUS_URI") from exc
