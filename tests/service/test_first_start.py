"""A first start: the server answers with the torch engine while the ONNX graphs export in
the background into the data dir's cache (never beside the checkpoint), then switches."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from models.factory import create_model, save_checkpoint
from models.onnx_encoder import SwitchingEncoder, export_lock
from service.cli.main import _ingest_demo_gallery
from service.config import Settings
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from tests.conftest import make_image
from tests.service.conftest import ADMIN_KEY

EXPORT_WAIT_S = 300  # two tiny towers; the CPU is shared with other work


def test_graphs_go_to_the_data_dirs_cache(tmp_path, monkeypatch) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.encoder_options["cache_dir"] == tmp_path / "data" / "cache" / "onnx"
    monkeypatch.setenv("TBPS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert Settings().encoder_options["cache_dir"] == tmp_path / "elsewhere" / "onnx"
    monkeypatch.setenv("TBPS_ENGINE_CACHE_DIR", str(tmp_path / "graphs"))
    assert Settings().encoder_options["cache_dir"] == tmp_path / "graphs"


def _hits(client: TestClient) -> list[int]:
    r = client.post("/search", json={"description": "a man in a red jacket", "top_k": 5})
    assert r.status_code == 200, r.text
    return [h["crop_id"] for h in r.json()["hits"]]


@pytest.mark.slow  # exports two tiny towers (tens of seconds on shared cores)
def test_serves_with_torch_while_exporting_then_switches(gallery, tmp_path) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "tiny.pt", create_model("tiny-clip"))
    settings = gallery.model_copy(update={"checkpoint": folder / "tiny.pt", "engine": "onnx"})
    cache = settings.resolved_engine_cache_dir
    assert cache.is_relative_to(settings.data_dir)
    with export_lock(cache), TestClient(create_app(settings)) as client:
        # another process holds the export: the app has started and answers meanwhile
        encoder = client.app.state.engine.encoder
        assert isinstance(encoder, SwitchingEncoder) and encoder.engine == "torch"
        r = client.post("/admin/reindex", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 202, r.text
        assert run_pending(settings, encoder) == 1
        before = _hits(client)
        assert len(before) == 5 and not encoder.switched.is_set()
    with TestClient(create_app(settings, encoder=encoder)) as client:
        assert encoder.switched.wait(EXPORT_WAIT_S), encoder.export_error
        assert encoder.engine == "onnx"
        assert _hits(client) == before  # same vectors within fp32 rounding
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]
    assert len(list(cache.glob("*.onnx"))) == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_demo_ingest_queues_one_add_job(migrated_settings, tmp_path) -> None:
    """250 files, committed every 100: one job for the whole gallery (not one per commit)."""
    gallery = tmp_path / "imgs"
    for i in range(250):
        folder = gallery / f"cam{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(make_image(i, size=(16, 32)))
    _ingest_demo_gallery(migrated_settings, gallery)
    with session_scope(migrated_settings.resolved_database_url) as session:
        jobs = crud.list_jobs(session)
        assert [(j.kind, j.status.value) for j in jobs] == [("add", "queued")]
        assert crud.count_crops(session) == 250
