"""The whole path as a user runs it: generate crops, `tbps ingest`, `tbps index`, `tbps serve`,
then search over real HTTP and get the crops back ranked."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

TBPS = [sys.executable, "-m", "service.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env):
    proc = subprocess.run(TBPS + args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


pytestmark = pytest.mark.slow  # real processes that import torch


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    e.update(TBPS_DATA_DIR=str(tmp_path / "data"), TBPS_DEVICE="cpu")
    return e


def test_ingest_index_serve_search(env, image_folder):
    out = _run(["ingest", str(image_folder), "--camera", "lobby"], env)
    assert "ingested 6 new crops" in out and "2 files rejected" in out
    assert "skipped cam-a/notes.txt" in out and "skipped cam-b/cut.jpg" in out
    assert "6 crops indexed" in _run(["index"], env)
    cli_hits = _run(["search", "a person in a red shirt", "--top-k", "3"], env)
    assert "3 hits from index" in cli_hits
    rows = [line for line in cli_hits.splitlines() if "/crops/" in line]
    assert len(rows) == 3 and all("lobby" in r and ".png" in r for r in rows)  # file and URL
    assert all("http://127.0.0.1:8000/crops/" in r and r.endswith("/image") for r in rows)
    assert "at most 2" in cli_hits  # what the score is
    unknown = subprocess.run(TBPS + ["search", "anyone", "--camera", "nowhere"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 1 and "no camera named 'nowhere'" in unknown.stderr
    example = rows[0].split()[2]  # rank, score, crop id, ...
    like = json.loads(_run(["search", "--like", example, "a person", "--top-k", "2", "--json"],
                           env))
    assert len(like) == 2 and int(example) not in [h["crop_id"] for h in like]
    gone = subprocess.run(TBPS + ["search", "--like", "999"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert gone.returncode == 1 and "no crop with id 999" in gone.stderr

    port = _free_port()
    server = subprocess.Popen(TBPS + ["serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        r = httpx.post(f"{base}/search", json={"description": "a person in a red shirt",
                                                "top_k": 6}, timeout=30)
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert sorted(h["crop_id"] for h in hits) == [1, 2, 3, 4, 5, 6]
        scores = np.array([h["score"] for h in hits])
        assert np.all(np.diff(scores) <= 1e-6)
        assert {h["camera"] for h in hits} == {"lobby"}
        image = httpx.get(base + hits[0]["image_url"], timeout=10)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        bad = httpx.post(f"{base}/search", json={"description": "", "top_k": 3}, timeout=10)
        assert bad.status_code == 422
    finally:
        server.terminate()
        server.wait(timeout=30)
