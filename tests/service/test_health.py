"""Liveness, readiness and Prometheus metrics."""

from fastapi.testclient import TestClient

from service.main import create_app


def test_readyz_says_why_until_an_index_is_live(migrated_settings, tiny_encoder):
    with TestClient(create_app(migrated_settings, encoder=tiny_encoder)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
        assert r.status_code == 503 and "no index" in r.json()["reason"]


def test_readyz_and_metrics_when_serving(api):
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["index_count"] == 12
    api.post("/search", json={"description": "a man"})
    text = api.get("/metrics").text
    assert 'tbps_http_requests_total{method="POST",route="/search",status="200"} 1.0' in text
    assert "tbps_search_seconds_count 1.0" in text and "tbps_index_vectors 12.0" in text
