"""A PostgreSQL that accepts and never answers (stopped, hung, behind a stuck proxy): requests
that need it get a 503 with a message within seconds, the pages, /metrics and /healthz answer
meanwhile, and once it answers again the same app serves again, without a restart.

The database is the session's real PostgreSQL behind a TCP proxy (``tests.tcp_proxy``) that the
test freezes: connections stay open and new ones are accepted, but nothing is forwarded, so no
kernel timeout fires; only the service's own deadlines (TBPS_DB_CONNECT_TIMEOUT,
TBPS_DB_STATEMENT_TIMEOUT) end the wait. Before them every such request hung until the proxy
thawed (issue 24, item 3)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.jobs.worker import run_pending
from service.main import create_app
from tests.service.conftest import ADMIN_KEY
from tests.tcp_proxy import TcpProxy

CONNECT_S, STATEMENT_S = 2.0, 3.0
FAST_503_S = 10.0  # a ping (CONNECT_S), a new connection (CONNECT_S), or the queue's wait
BACK_WITHIN_S = 15.0
SEARCH = {"description": "a person in a red coat", "top_k": 10}


@pytest.fixture
def proxied(gallery):
    """The gallery's settings with its PostgreSQL reached through a TCP proxy."""
    url = make_url(gallery.resolved_database_url)
    proxy = TcpProxy(f"tcp://{url.host}:{url.port or 5432}").open()
    settings = gallery.model_copy(update={
        "database_url": url.set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False),
        "db_connect_timeout": CONNECT_S, "db_statement_timeout": STATEMENT_S,
        "max_concurrent_requests": 4, "admission_wait_seconds": 3.0})
    yield settings, proxy
    proxy.thaw()
    proxy.close()


def _timed(client: TestClient, method: str, path: str, **kwargs) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    r = client.request(method, path, **kwargs)
    return r.status_code, r.json() if "json" in r.headers.get("content-type", "") else {}, \
        time.perf_counter() - t0


def _until_searchable(client: TestClient) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < BACK_WITHIN_S:
        if client.post("/search", json=SEARCH).status_code == 200:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise AssertionError(f"no search answered {BACK_WITHIN_S} s after the database came back")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_frozen_database_is_a_fast_503_and_the_service_recovers(proxied, tiny_encoder):
    settings, proxy = proxied
    with TestClient(create_app(settings, encoder=tiny_encoder)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/admin/reindex").status_code == 202
        assert run_pending(settings, tiny_encoder) == 1
        assert client.post("/search", json=SEARCH).status_code == 200  # pooled connections
        proxy.freeze()
        pool = ThreadPoolExecutor(8)
        try:
            futures = [pool.submit(_timed, client, "POST", "/search", json=SEARCH)
                       for _ in range(6)]
            futures += [pool.submit(_timed, client, "GET", "/cameras") for _ in range(2)]
            time.sleep(0.5)  # those are waiting on the frozen database
            side = {path: _timed(client, "GET", path) for path in ("/healthz", "/", "/metrics")}
            done, late = wait(futures, timeout=FAST_503_S + 5)
            assert not late, f"{len(late)} requests still waiting on the frozen database"
            frozen = [f.result() for f in done]
        finally:
            proxy.thaw()  # a request still waiting (a failure) ends, and the pool with it
            pool.shutdown()
        back_s = _until_searchable(client)
    for status, body, took in frozen:
        assert status == 503 and took < FAST_503_S, (status, body, took)
        assert "unavailable" in body["detail"] or "busy" in body["detail"], body
    assert any("database is unavailable" in body["detail"] for _, body, _ in frozen)
    for path, (status, _, took) in side.items():
        assert status == 200 and took < 2.0, (path, status, took)
    assert back_s < BACK_WITHIN_S
