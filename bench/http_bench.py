"""POST /search latency over real HTTP on loopback, text encoding included.

The gallery is synthetic: N crop rows (cameras, capture times over 30 days, person/track ids)
inserted into the database, and N synthetic vectors of the model's dimension and part layout
(each part unit-norm, see ``bench.search_bench.synthetic``) published as an index version. The
text encoder is the real one of ``--checkpoint``. A `tbps serve` subprocess answers; closed-loop
clients (threads with keep-alive connections) send a mix of requests and time each one.

    python -m bench.http_bench --n 100000 --checkpoint runs/tiny/model.pt \
        --spec Flat --spec IVF1024_HNSW32,SQ8 --requests 300 --concurrency 1 --concurrency 4

``--config NAME:TBPS_X=1,TBPS_Y=2`` (repeatable) serves each spec once per configuration, one
server after the other in the same run (e.g. micro-batching off and on, see docs/results.md).

Writes bench/results/http_<n>.json (machine, load average, per scenario p50/p90/p99, rps).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.envinfo import environment, format_table, machine_line
from bench.search_bench import synthetic

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 4, 1, tzinfo=UTC)
DAYS, CAMERAS, CROPS_PER_PERSON = 30, 20, 5
DESCRIPTIONS = [
    "a woman in a red coat with a black backpack and white sneakers",
    "a man wearing a blue jacket, black trousers and brown shoes",
    "a young man in a white t-shirt and jeans carrying a bag",
    "a girl with long black hair in a yellow dress",
    "an older man with grey hair wearing a green sweater and glasses",
    "a person in a black hoodie and grey sweatpants",
]


def scenarios(top_k: int) -> dict[str, dict[str, Any]]:
    day = (T0 + timedelta(days=12)).isoformat()
    return {
        "plain": {"top_k": top_k},
        "camera_filter": {"top_k": top_k, "cameras": ["cam-03"]},
        "time_filter_1day": {"top_k": top_k, "time_from": day,
                             "time_to": (T0 + timedelta(days=13)).isoformat()},
        "group_by_person": {"top_k": top_k, "group_by": "person"},
    }


def make_gallery(url: str, n: int) -> None:
    """N crop rows over CAMERAS cameras, DAYS days and n / CROPS_PER_PERSON persons."""
    from sqlalchemy import insert

    from service.store.db import migrate, session_scope
    from service.store.orm import Camera, Crop, CropStatus

    migrate(url)
    rng = np.random.default_rng(0)
    seconds = rng.integers(0, DAYS * 86400, n)
    with session_scope(url) as session:
        session.execute(insert(Camera), [{"name": f"cam-{c:02d}"} for c in range(CAMERAS)])
        for lo in range(0, n, 20_000):
            rows = [{"id": i + 1, "sha256": f"{i + 1:064x}",
                     "stored_path": f"synthetic/{i + 1}.jpg",
                     "camera_id": int(i % CAMERAS) + 1, "width": 64, "height": 128,
                     "captured_at": T0 + timedelta(seconds=int(seconds[i])),
                     "person_id": f"track-{i // CROPS_PER_PERSON:06d}",
                     "status": CropStatus.indexed}
                    for i in range(lo, min(lo + 20_000, n))]
            session.execute(insert(Crop), rows)


def publish_version(index_dir: Path, vectors: Path, spec_name: str, encoder_spec: dict) -> str:
    """A version over the synthetic vectors (ids 1..N), built with the indexer's functions."""
    from indexer.backends.faiss_backend import write_first_stage
    from indexer.backends.faiss_store import IndexStore, new_version_name
    from indexer.spec import choose_spec, normalise_factory
    from indexer.writer import write_arrays

    store, version = IndexStore(index_dir), new_version_name()
    staging = store.staging_dir(version)
    full = np.load(vectors, mmap_mode="r")  # (N, D) float16
    write_arrays(staging, full, np.arange(1, len(full) + 1, dtype=np.int64))
    spec = choose_spec(len(full), None if spec_name == "auto" else normalise_factory(spec_name))
    manifest = write_first_stage(staging, full, spec, encoder_spec)
    manifest = manifest.replace(factory=spec.factory, extra={"synthetic": True})
    store.commit_staging(staging, version, manifest)
    store.publish(version)
    return version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start; see {log}")


def wait_ready(base: str, version: str) -> None:
    for _ in range(600):
        r = httpx.get(f"{base}/readyz", timeout=5)
        if r.status_code == 200 and r.json()["index_version"] == version:
            return
        time.sleep(0.2)
    raise RuntimeError(f"index {version} never became live")


def load(base: str, body: dict, requests: int, concurrency: int) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, `requests` timed requests in all."""
    latencies: list[float] = []
    server_ms: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests))
    errors = [0]

    def client(seed: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                payload = {"description": DESCRIPTIONS[(i + seed) % len(DESCRIPTIONS)], **body}
                started = time.perf_counter()
                r = http.post("/search", json=payload)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if r.status_code != 200:
                        errors[0] += 1
                        continue
                    latencies.append(elapsed)
                    server_ms.append(r.json()["took_ms"])

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0],
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mean_ms": round(float(lat.mean()), 1),
            "server_p50_ms": round(float(np.percentile(server_ms, 50)), 1),
            "rps": round(len(lat) / wall, 1),
            "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    """"name:TBPS_A=1,TBPS_B=x" -> (name, {"TBPS_A": "1", "TBPS_B": "x"})."""
    name, _, pairs = text.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    if not name or not all(k.startswith("TBPS_") for k in env):
        raise argparse.ArgumentTypeError(f"--config {text!r}: NAME:TBPS_X=value,...")
    return name, env


def serve_and_load(env: dict[str, str], work: Path, version: str, args,
                   labels: dict[str, Any]) -> list[dict[str, Any]]:
    """One server with ``env``: every scenario at every concurrency."""
    server, base = start_server(env, work / f"server-{labels['config']}.log")
    rows = []
    try:
        wait_ready(base, version)
        for name, body in scenarios(args.top_k).items():
            if args.scenario and name not in args.scenario:
                continue
            load(base, body, args.warmup, 1)  # loads the catalog and the exact index
            for c in args.concurrency or [1, 4]:
                row = {**labels, "scenario": name, **load(base, body, args.requests, c)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="crops in the gallery")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default bundled)")
    parser.add_argument("--spec", action="append", help="index spec(s), or auto: the one "
                        "choose_spec picks for --n (default: Flat)")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per run")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, action="append", help="default: 1 and 4")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--scenario", action="append", choices=list(scenarios(10)),
                        help="only these request kinds (default: all)")
    parser.add_argument("--config", type=parse_config, action="append",
                        help="NAME:TBPS_X=v,... a server configuration (default: as is)")
    parser.add_argument("--database-url", help="default: SQLite in the work folder")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="default bench/results/http_<n>.json")
    args = parser.parse_args()

    from models.factory import load_encoder

    encoder_spec = load_encoder(args.checkpoint, "cpu").spec.to_dict()
    work = args.work or Path(tempfile.mkdtemp(prefix="tbps-http-bench-"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    url = args.database_url or f"sqlite:///{data / 'tbps.sqlite3'}"
    started = time.perf_counter()
    make_gallery(url, args.n)
    vectors = work / "vectors.npy"
    synthetic(args.n, 1, encoder_spec, vectors)
    setup_s = time.perf_counter() - started

    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(data), TBPS_DATABASE_URL=url, TBPS_DEVICE="cpu",
               TBPS_ENVIRONMENT="development")
    if args.checkpoint:
        env["TBPS_CHECKPOINT"] = str(Path(args.checkpoint).resolve())
    before = environment()
    runs = []
    for spec in args.spec or ["Flat"]:
        mark = time.perf_counter()
        version = publish_version(data / "index", vectors, spec, encoder_spec)
        build_s = round(time.perf_counter() - mark, 1)
        for name, extra in args.config or [("as-is", {})]:
            labels = {"spec": spec, "config": name, "server_env": extra, "build_s": build_s}
            runs += serve_and_load({**env, **extra}, work, version, args, labels)
    result = {"benchmark": "http_search", "n_crops": args.n, "machine": before,
              "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "model": {k: encoder_spec[k] for k in ("name", "dim", "checkpoint_sha256")},
              "parts": [p["name"] for p in encoder_spec["parts"]],
              "checkpoint": args.checkpoint, "database": url.split(":", 1)[0],
              "gallery": f"synthetic: {args.n} crop rows over {CAMERAS} cameras, {DAYS} days, "
                         f"{CROPS_PER_PERSON} crops per person; synthetic vectors of the model's "
                         "dimension and part layout; real text encoder",
              "setup_s": round(setup_s, 1), "runs": runs}
    out = args.out or ROOT / "bench" / "results" / f"http_{args.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(runs, [
        ("spec", lambda r: r["spec"]), ("config", lambda r: r["config"]),
        ("request", lambda r: r["scenario"]),
        ("clients", lambda r: r["concurrency"]), ("p50 ms", lambda r: r["p50_ms"]),
        ("p90 ms", lambda r: r["p90_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
        ("server p50 ms", lambda r: r["server_p50_ms"]), ("req/s", lambda r: r["rps"]),
        ("errors", lambda r: r["errors"])]))
    print(f"{machine_line(before)}; wrote {out}")


if __name__ == "__main__":
    main()
