"""A Milvus lost after the backend was made: every call raises ``BackendUnavailable`` naming the
server, fast (TBPS_MILVUS_TIMEOUT); genuine errors stay what they are; the same backend object
works again once the server is back. The server is the session's real Milvus, lost and found
again through a TCP proxy (``tests.tcp_proxy``)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from indexer.backends import BackendUnavailable, NoIndex
from tests.conftest import milvus_prefix
from tests.indexer.backend_data import encoder_dict, make_rows
from tests.tcp_proxy import TcpProxy

pymilvus = pytest.importorskip("pymilvus", reason="the scale extra")

TIMEOUT_S = 15.0  # a build loads collections under it: seconds on a busy 2-core machine
FAIL_WITHIN_S = 4 * TIMEOUT_S  # a connect attempt, and the retry's own deadline


@pytest.fixture
def proxied_backend(milvus_proxy: TcpProxy, tmp_path, request: pytest.FixtureRequest):
    """A Milvus backend that reaches the server through the proxy, with a small live version."""
    from indexer.backends.milvus_backend import MilvusBackend

    backend = MilvusBackend(root=tmp_path / "work", uri=milvus_proxy.uri, timeout=TIMEOUT_S,
                            prefix=milvus_prefix(request))
    rows = make_rows(40)
    backend.publish(backend.build([rows], total=len(rows), encoder=encoder_dict()))
    yield backend
    if milvus_proxy.listener is None:  # a test that failed with the server "down"
        milvus_proxy.open()
    backend.drop_all()
    backend.close()


def _unavailable(call, uri: str) -> BackendUnavailable:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        call()
    assert time.monotonic() - started < FAIL_WITHIN_S
    message = str(caught.value)
    assert f"Milvus at {uri}" in message and "unreachable" in message
    assert "TBPS_MILVUS_URI" in message
    return caught.value


def _back(call, within_s: float = 60.0):
    """``call()`` once the server answers again: gRPC reconnects with a backoff of seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_lost_server_is_backend_unavailable_and_the_backend_recovers(proxied_backend,
                                                                       milvus_proxy):
    backend = proxied_backend
    query = make_rows(1, seed=5).vectors  # (1, D)
    pointer, before = backend.current_version(), backend.search(query, 5)
    milvus_proxy.close()
    for call in (lambda: backend.search(query, 5), backend.current_version, backend.open,
                 lambda: backend.add(make_rows(2, seed=9, first_id=900)),
                 lambda: backend.remove(np.asarray([1])), backend.check):
        _unavailable(call, milvus_proxy.uri)
    milvus_proxy.open()  # the server is back on the same address
    assert _back(backend.current_version) == pointer
    after = backend.search(query, 5)
    assert np.array_equal(after.ids, before.ids) and np.allclose(after.scores, before.scores)
    assert backend.open().count == 40


def test_a_view_opened_before_the_loss_raises_it_too(proxied_backend, milvus_proxy):
    view = proxied_backend.open()
    milvus_proxy.close()
    _unavailable(view.live_ids, milvus_proxy.uri)  # the query iterator, past the client's own calls
    _unavailable(lambda: view.vectors(np.asarray([1, 2])), milvus_proxy.uri)
    milvus_proxy.open()
    assert len(_back(view.live_ids)) == 40


def test_genuine_errors_are_not_converted(proxied_backend):
    backend = proxied_backend
    with pytest.raises(pymilvus.MilvusException) as caught:  # a bad filter expression
        backend.client.query(backend.meta_name, filter="no_such_field == 1",
                             output_fields=["key"])
    assert not isinstance(caught.value, BackendUnavailable)
    with pytest.raises(pymilvus.MilvusException):  # a collection that does not exist
        backend.client.query(f"{backend.prefix}_missing", filter="", output_fields=["count(*)"])
    with pytest.raises(NoIndex):  # a version that does not exist
        backend.publish(f"{backend.prefix}_v0_missing")


def test_what_counts_as_unreachable():
    from pymilvus import MilvusException, MilvusUnavailableException

    from indexer.backends.milvus_calls import unreachable

    class Status(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self.status = code

        def code(self) -> grpc.StatusCode:
            return self.status

    lost = [ConnectionRefusedError(), MilvusUnavailableException(message="down"),
            MilvusException(code=grpc.StatusCode.UNAVAILABLE, message="retries ran out"),
            MilvusException(code=2, message="Fail connecting to server"),
            Status(grpc.StatusCode.DEADLINE_EXCEEDED)]
    genuine = [MilvusException(code=1100, message="invalid expression"),
               MilvusException(code=100, message="collection not found"),
               Status(grpc.StatusCode.INVALID_ARGUMENT), ValueError("bad rows")]
    assert all(unreachable(e) for e in lost)
    assert not any(unreachable(e) for e in genuine)
    wrapped = MilvusException(message="Unexpected error")
    wrapped.__cause__ = Status(grpc.StatusCode.UNAVAILABLE)
    looped = MilvusException(code=1100, message="e from e")
    looped.__cause__ = looped
    assert unreachable(wrapped) and not unreachable(looped)
