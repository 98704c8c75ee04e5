"""The job worker that `tbps serve --with-worker` spawns never outlives the server: not after a
kill -9 of the server, not after a start that fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from models.factory import create_model, save_checkpoint
from service.main import create_app
from tests.service.waiting import wait_for as _wait

TBPS = [sys.executable, "-m", "service.cli"]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, create_model("tiny-clip"))
    return path


@pytest.fixture
def worker_environment(tiny_checkpoint, tmp_path, monkeypatch) -> dict[str, str]:
    """What a `tbps serve` or `tbps worker` subprocess reads: a data dir, the tiny model."""
    for key in [k for k in os.environ if k.startswith("TBPS_")]:
        monkeypatch.delenv(key)
    env = dict(TBPS_DATA_DIR=str(tmp_path / "data"), TBPS_CHECKPOINT=str(tiny_checkpoint),
               TBPS_DEVICE="cpu", TBPS_ENGINE="torch", OMP_NUM_THREADS="1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kill_9_of_serve_with_worker_takes_its_worker_along(worker_environment, tmp_path):
    port, log = _free_port(), tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(TBPS + ["serve", "--with-worker", "--port", str(port)],
                                  env=worker_environment, stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.TransportError:
                return False

        _wait(up, 120, "the server")
        workers = _wait(lambda: _children(server.pid), 30, "the worker subprocess")
        _wait(lambda: "worker waiting for jobs" in log.read_text(), 120, "the worker to run")
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        _wait(lambda: not any(_alive(pid) for pid in workers), 10,
              "the orphaned worker to exit")
    finally:
        for pid in [server.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.wait(timeout=10)


@pytest.mark.slow
def test_a_failed_start_stops_the_worker_it_spawned(migrated_settings, worker_environment,
                                                    monkeypatch, tmp_path):
    monkeypatch.setenv("TBPS_DATABASE_URL", migrated_settings.resolved_database_url)
    monkeypatch.setenv("TBPS_DATA_DIR", str(migrated_settings.data_dir))
    settings = migrated_settings.model_copy(update={  # the server cannot load its model
        "spawn_worker": True, "checkpoint": tmp_path / "missing.pt"})
    app = create_app(settings)
    with pytest.raises(FileNotFoundError), TestClient(app):
        pass
    worker = app.state.worker.process
    try:
        assert worker is not None
        _wait(lambda: worker.poll() is not None, 10, "the worker to be stopped")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
