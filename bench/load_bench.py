"""A bounded load and fault run against `tbps serve --with-worker` on loopback.

N closed-loop clients (threads, keep-alive connections) send a mix of searches and one-file
uploads for T seconds; optionally a full reindex is queued mid-run and the job worker is
killed with SIGKILL mid-run (the server's supervisor restarts it; its job is requeued). At the
end the queue is drained and the run is reconciled: every acknowledged upload is in the
database, indexed and in the live index, and no file lies in the crops folder without a row.

    python -m bench.load_bench --clients 16 --seconds 60 --reindex-at 15 --kill-worker-at 25

Only 127.0.0.1 is ever contacted. Writes bench/results/load_<clients>c_<seconds>s.json
(machine, per kind requests/s and p50/p95/p99, errors by status, reconciliation).

With ``--bursts`` and/or ``--freeze`` it runs the overload scenarios of issue 24 instead:
bursts of N closed-loop search clients (top_k 50, half grouped by person) against one server
on SQLite, each for ``--burst-seconds`` (per burst: requests, 200 / 503 / other, p50 / p99, how
long /healthz takes during it, how long after it a search answers 200 again); and a frozen
database: a server on a throwaway PostgreSQL database reached through a TCP proxy
(``tests.tcp_proxy``) that is frozen (accepts, never answers) for ``--freeze`` seconds under
``--freeze-clients`` search clients (time to the first 503, the 5xx by kind, how long the page,
/healthz and /metrics take meanwhile, time to the first 200 after the thaw).

    python -m bench.load_bench --bursts 64 200 --burst-seconds 10 --freeze 10 --gallery 1540 \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Writes bench/results/load_bursts_<clients>c_<seconds>s[_freeze<seconds>s].json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.envinfo import environment, format_table, machine_line

ROOT = Path(__file__).resolve().parent.parent
KEY = "load-bench-admin-key-0123456789"
HOST = "127.0.0.1"  # loopback only
MAX_CLIENTS, MAX_SECONDS = 64, 600
MAX_BURST_CLIENTS = 256
CLIENT_TIMEOUT_S = 30.0  # a burst client gives up after this (the stalled runs held 25 s and more)
DESCRIPTIONS = ["a woman in a red coat with a black backpack", "a man in a blue jacket",
                "a person in a black hoodie and grey trousers", "a girl in a yellow dress"]


def crop_png(seed: int) -> bytes:
    """A small person-shaped crop (two coloured halves and noise), unique per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (96, 48, 3), dtype=np.uint8)
    pixels[:48] += rng.integers(0, 190, 3, dtype=np.uint8)
    pixels[48:] += rng.integers(0, 190, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Record:
    kind: str  # search | upload | reindex
    at: float  # seconds since the start
    seconds: float
    status: int | None  # None: connection error
    crop_id: int | None = None
    outcome: str | None = None  # an upload's file: added | duplicate | rejected


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: dict[str, float] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def prepare(work: Path, checkpoint: Path | None, gallery: int,
            database_url: str | None = None) -> dict[str, str]:
    """A data dir with a seed gallery, migrated and indexed; returns the server environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(work / "data"), TBPS_DEVICE="cpu", TBPS_ADMIN_KEYS=KEY,
               TBPS_ENVIRONMENT="development", TBPS_JOB_LEASE_SECONDS="10",
               TBPS_AUDIT_SEARCHES="true", OMP_NUM_THREADS="1")
    if database_url:
        env["TBPS_DATABASE_URL"] = database_url
    if checkpoint is not None:
        env["TBPS_CHECKPOINT"] = str(checkpoint)
    seed = work / "seed" / "seed-cam"
    seed.mkdir(parents=True, exist_ok=True)
    for i in range(gallery):
        (seed / f"s{i}.png").write_bytes(crop_png(10**9 + i))  # apart from the clients' seeds
    cli = [sys.executable, "-m", "service.cli"]
    for args in (["migrate"], ["ingest", str(seed.parent)], ["index", "--workers", "0"]):
        subprocess.run(cli + args, env=env, check=True, capture_output=True, timeout=600)
    return env


def tiny_checkpoint(work: Path) -> Path:
    from models.factory import create_model, save_checkpoint

    path = work / "tiny-clip.pt"
    save_checkpoint(path, create_model("tiny-clip"))
    return path


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", HOST,
                             "--port", str(port), "--with-worker"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not become ready; see {log}")


def worker_pid(server_pid: int) -> int | None:
    """The `tbps worker` child of the server process (from /proc)."""
    for child in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"worker" in cmd:
                return int(pid)
    return None


def client(base: str, run: Run, seed: int, stop: threading.Event, upload_share: float,
           started: float) -> None:
    rng = np.random.default_rng(seed)
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=base, timeout=60, headers=headers) as http:
        n = 0
        while not stop.is_set():
            n += 1
            kind = "upload" if rng.random() < upload_share else "search"
            t0 = time.perf_counter()
            try:
                if kind == "search":
                    r = http.post("/search", json={"description": DESCRIPTIONS[n % 4],
                                                   "top_k": 10})
                    crop_id = outcome = None
                else:
                    r = http.post("/admin/crops", data={"camera": "load-cam",
                                                        "captured_at": "2026-06-01T08:00:00Z"},
                                  files=[("files", (f"u{seed}-{n}.png",
                                                    crop_png(seed * 10**6 + n), "image/png"))])
                    file = r.json()["files"][0] if r.status_code == 200 else {}
                    crop_id, outcome = file.get("crop_id"), file.get("status")
                status = r.status_code
            except httpx.TransportError:
                status, crop_id, outcome = None, None, None
            run.add(Record(kind, t0 - started, time.perf_counter() - t0, status, crop_id,
                           outcome))


def faults(base: str, run: Run, server: subprocess.Popen, started: float, stop: threading.Event,
           reindex_at: float | None, kill_at: float | None) -> None:
    """The mid-run events: a full reindex, a SIGKILL of the job worker."""
    todo = sorted((t, what) for t, what in ((reindex_at, "reindex"), (kill_at, "kill"))
                  if t is not None)
    for at, what in todo:
        if stop.wait(max(0.0, started + at - time.perf_counter())):
            return
        if what == "reindex":
            t0 = time.perf_counter()
            r = httpx.post(f"{base}/admin/reindex", headers={"X-API-Key": KEY}, timeout=60)
            run.add(Record("reindex", t0 - started, time.perf_counter() - t0, r.status_code))
        else:
            running = wait_running(base, deadline=time.monotonic() + 20)
            pid = worker_pid(server.pid)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                run.events["worker_killed_pid"] = pid
            run.events["running_at_kill"] = running
        run.events[what] = round(time.perf_counter() - started, 2)


def wait_running(base: str, deadline: float) -> list[str]:
    """Poll until a job is running (so that the kill lands mid-job), for at most ~20 s."""
    running: list[str] = []
    while not running and time.monotonic() < deadline:
        jobs = httpx.get(f"{base}/admin/jobs", headers={"X-API-Key": KEY}, timeout=30).json()
        running = [f"{j['kind']}:{j['id']}" for j in jobs if j["status"] == "running"]
        if not running:
            time.sleep(0.02)
    return running


def drain(base: str, timeout: float) -> dict[str, Any]:
    """Wait until no job is queued or running (the worker was restarted and caught up)."""
    deadline, jobs = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{base}/admin/jobs", params={"limit": 200},
                         headers={"X-API-Key": KEY}, timeout=30).json()
        if not any(j["status"] in ("queued", "running") for j in jobs):
            break
        time.sleep(1)
    return {"drained": not any(j["status"] in ("queued", "running") for j in jobs),
            "jobs": Counter(f"{j['kind']}:{j['status']}" for j in jobs),
            "retried": [f"{j['kind']}:{j['id']} {j['status']} after {j.get('attempts')} runs"
                        for j in jobs if (j.get("attempts") or 0) > 1]}


def reconcile(env: dict[str, str], acknowledged: set[int]) -> dict[str, Any]:
    """Every acknowledged upload in the DB, indexed and in the live index; no stray file."""
    from indexer.backends.faiss_store import IndexStore
    from service.config import Settings
    from service.store import crud
    from service.store.db import session_scope

    settings = Settings(data_dir=Path(env["TBPS_DATA_DIR"]), environment="development")
    with session_scope(settings.resolved_database_url) as session:
        rows = {c.id: c for c in crud.indexable_crops(session)}
        status = {cid: rows[cid].status.value if cid in rows else "missing"
                  for cid in acknowledged}
        paths = {c.stored_path for c in rows.values()}
    live = IndexStore(settings.resolved_index_dir).load(use_gpu=False)
    in_index = set(live.live_ids().tolist()) if live else set()
    crops = settings.resolved_crops_dir
    files = {p.relative_to(crops).as_posix() for p in crops.rglob("*") if p.is_file()}
    return {"acknowledged_uploads": len(acknowledged),
            "not_in_db": sum(s == "missing" for s in status.values()),
            "not_indexed": sum(s != "indexed" for s in status.values()),
            "not_in_live_index": len(acknowledged - in_index),
            "stray_files": len({f for f in files if not f.startswith(".")} - paths),
            "temp_files": sum(1 for f in files if f.endswith(".tmp")),
            "rows_without_file": len(paths - files)}


def _percentile(ms: np.ndarray, q: int) -> float | None:
    return round(float(np.percentile(ms, q)), 1) if len(ms) else None


def summarise(run: Run, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for kind in ("search", "upload", "reindex"):
        recs = [r for r in run.records if r.kind == kind]
        if not recs:
            continue
        ok = np.asarray([r.seconds * 1000 for r in recs if r.status is not None and
                         r.status < 500])
        statuses = Counter("conn_error" if r.status is None else str(r.status) for r in recs)
        rows.append({"kind": kind, "requests": len(recs), "rps": round(len(recs) / seconds, 1),
                     **{f"p{q}_ms": _percentile(ok, q) for q in (50, 95, 99)},
                     "statuses": dict(sorted(statuses.items())),
                     "5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
                     "conn_errors": statuses.get("conn_error", 0)})
    return rows


def search_body(n: int) -> dict[str, Any]:
    """The burst's search: top_k 50, every other one grouped by person."""
    return {"description": DESCRIPTIONS[n % 4], "top_k": 50,
            "group_by": "person" if n % 2 else "crop"}


def answer_kind(response: httpx.Response) -> str | None:
    """What a 5xx says, in a word or two: busy (the admission queue), database, other."""
    if response.status_code < 500:
        return None
    detail = str(response.json().get("detail", "")) if "json" in response.headers.get(
        "content-type", "") else response.text[:80]
    if "busy" in detail:
        return "busy"
    return "database unavailable" if "database" in detail else detail[:60] or "no detail"


def searcher(base: str, run: Run, seed: int, stop: threading.Event, started: float) -> None:
    """A closed-loop search client on its own keep-alive connection."""
    with httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT_S) as http:
        n = seed
        while not stop.is_set():
            n += 1
            t0 = time.perf_counter()
            try:
                r = http.post("/search", json=search_body(n))
                status, kind = r.status_code, answer_kind(r)
            except httpx.TimeoutException:
                status, kind = None, "client timeout"
            except httpx.TransportError:
                status, kind = None, "connection error"
            run.add(Record("search", t0 - started, time.perf_counter() - t0, status,
                           outcome=kind))


def timed_get(base: str, path: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        status = httpx.get(f"{base}{path}", timeout=CLIENT_TIMEOUT_S).status_code
    except httpx.TransportError as exc:
        status = type(exc).__name__
    return {"status": status, "ms": round((time.perf_counter() - t0) * 1000, 1)}


def first_200(base: str, since: float, limit_s: float = 120) -> float | None:
    """Seconds from ``since`` (perf_counter) until a search answers 200; None past the limit."""
    n = 0
    while time.perf_counter() - since < limit_s:
        n += 1
        try:
            if httpx.post(f"{base}/search", json=search_body(n),
                          timeout=CLIENT_TIMEOUT_S).status_code == 200:
                return round(time.perf_counter() - since, 2)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return None


def start_clients(base: str, run: Run, clients: int, stop: threading.Event,
                  started: float) -> list[threading.Thread]:
    threads = [threading.Thread(target=searcher, args=(base, run, c * 10**6, stop, started))
               for c in range(clients)]
    for t in threads:
        t.start()
    return threads


def answered_ms(records: list[Record]) -> np.ndarray:
    return np.asarray([r.seconds * 1000 for r in records if r.status is not None])


def run_burst(base: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` search clients for ``seconds``; /healthz timed in the middle."""
    run, stop, started = Run(), threading.Event(), time.perf_counter()
    threads = start_clients(base, run, clients, stop, started)
    stop.wait(seconds / 2)
    healthz = timed_get(base, "/healthz")
    stop.wait(max(0.0, started + seconds - time.perf_counter()))
    stop.set()
    ended = time.perf_counter()
    recovery = first_200(base, ended)
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT_S + 10)
    statuses = Counter("no answer" if r.status is None else r.status for r in run.records)
    ms = answered_ms(run.records)
    return {"clients": clients, "seconds": seconds, "requests": len(run.records),
            "200": statuses.get(200, 0), "503": statuses.get(503, 0),
            "other": {str(k): v for k, v in statuses.items() if k not in (200, 503)},
            "5xx_kinds": dict(Counter(r.outcome for r in run.records if r.outcome)),
            "p50_ms": _percentile(ms, 50), "p99_ms": _percentile(ms, 99),
            "max_ms": round(float(ms.max()), 1) if len(ms) else None,
            "healthz_during": healthz, "recovery_s": recovery,
            "drained_s": round(time.perf_counter() - ended, 2)}


def run_frozen(base: str, proxy: Any, clients: int, freeze_s: float,
               warm_s: float = 3.0, after_s: float = 5.0) -> dict[str, Any]:
    """Search clients; the database frozen ``freeze_s`` seconds after ``warm_s``; thawed."""
    run, stop, started = Run(), threading.Event(), time.perf_counter()
    threads = start_clients(base, run, clients, stop, started)
    stop.wait(warm_s)
    proxy.freeze()
    frozen_at = time.perf_counter() - started
    stop.wait(min(1.0, freeze_s / 2))
    side = {path: timed_get(base, path) for path in ("/healthz", "/", "/metrics")}
    stop.wait(max(0.0, started + frozen_at + freeze_s - time.perf_counter()))
    proxy.thaw()
    thawed_at = time.perf_counter() - started
    stop.wait(after_s)
    stop.set()
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT_S + 10)
    during = [r for r in run.records if frozen_at <= r.at + r.seconds and r.at < thawed_at]
    first_503 = min((r.at + r.seconds for r in during if r.status == 503), default=None)
    back = min((r.at + r.seconds for r in run.records if r.status == 200 and r.at >= thawed_at),
               default=None)
    ms = answered_ms(during)
    return {"clients": clients, "frozen_s": freeze_s, "requests_while_frozen": len(during),
            "statuses_while_frozen": dict(Counter(str(r.status) for r in during)),
            "5xx_kinds": dict(Counter(r.outcome for r in during if r.outcome)),
            "first_503_s": round(first_503 - frozen_at, 2) if first_503 else None,
            "p50_ms_while_frozen": _percentile(ms, 50),
            "max_ms_while_frozen": round(float(ms.max()), 1) if len(ms) else None,
            "side_routes_while_frozen": side,
            "recovery_s": round(back - thawed_at, 2) if back else None,
            "statuses_after": dict(Counter(str(r.status) for r in run.records
                                           if r.at >= thawed_at))}


def pg_database(admin_url: str, drop: str | None = None) -> str:
    """A new, empty PostgreSQL database beside ``admin_url``'s (or drop the one named)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = drop or f"tbps_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if drop
                          else f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def overload_bursts(args: argparse.Namespace, work: Path, checkpoint: Path) -> list[dict]:
    env = prepare(work / "bursts", checkpoint, args.gallery)
    server, base = start_server(env, work / "bursts-server.log")
    try:
        return [run_burst(base, clients, args.burst_seconds) for clients in args.bursts]
    finally:
        server.terminate()
        server.wait(timeout=60)


def overload_frozen(args: argparse.Namespace, work: Path, checkpoint: Path) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    from tests.tcp_proxy import TcpProxy

    url = pg_database(args.postgres)
    direct = make_url(url)
    proxy = TcpProxy(f"tcp://{direct.host}:{direct.port or 5432}").open()
    try:
        env = prepare(work / "frozen", checkpoint, args.gallery, database_url=url)
        env["TBPS_DATABASE_URL"] = direct.set(host="127.0.0.1", port=proxy.port) \
            .render_as_string(hide_password=False)
        server, base = start_server(env, work / "frozen-server.log")
        try:
            return run_frozen(base, proxy, args.freeze_clients, args.freeze)
        finally:
            proxy.thaw()
            server.terminate()
            server.wait(timeout=60)
    finally:
        proxy.close()
        pg_database(args.postgres, drop=make_url(url).database)


def overload(args: argparse.Namespace) -> None:
    work = args.work or Path(tempfile.mkdtemp(prefix="tbps-load-bench-"))
    checkpoint = args.checkpoint.resolve() if args.checkpoint else tiny_checkpoint(work)
    machine = environment()
    bursts = overload_bursts(args, work, checkpoint) if args.bursts else []
    frozen = overload_frozen(args, work, checkpoint) if args.freeze else None
    result = {"benchmark": "load-overload", "machine": machine, "gallery": args.gallery,
              "model": "tiny-clip (untrained)" if not args.checkpoint else str(args.checkpoint),
              "bursts": bursts, "frozen_database": frozen,
              "loadavg_end": [round(x, 2) for x in os.getloadavg()], "work": str(work)}
    name = "load_bursts_" + "-".join(str(c) for c in args.bursts) + "c" if bursts else "load"
    name += f"_{int(args.burst_seconds)}s" if bursts else ""
    name += f"_freeze{int(args.freeze)}s" if args.freeze else ""
    out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if bursts:
        print(format_table(bursts, [
            ("clients", lambda r: r["clients"]), ("requests", lambda r: r["requests"]),
            ("200", lambda r: r["200"]), ("503", lambda r: r["503"]),
            ("other", lambda r: ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or 0),
            ("p50 ms", lambda r: r["p50_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
            ("max ms", lambda r: r["max_ms"]),
            ("/healthz ms", lambda r: r["healthz_during"]["ms"]),
            ("recovery s", lambda r: r["recovery_s"])]))
    if frozen:
        print(format_table([frozen], [
            ("frozen s", lambda r: r["frozen_s"]), ("clients", lambda r: r["clients"]),
            ("requests", lambda r: r["requests_while_frozen"]),
            ("first 503 s", lambda r: r["first_503_s"]),
            ("5xx kinds", lambda r: ", ".join(f"{k}: {v}" for k, v in r["5xx_kinds"].items())),
            ("max ms", lambda r: r["max_ms_while_frozen"]),
            ("/healthz, /, /metrics ms", lambda r: ", ".join(
                str(v["ms"]) for v in r["side_routes_while_frozen"].values())),
            ("recovery s", lambda r: r["recovery_s"])]))
    print(f"{machine_line(machine)}; wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--upload-share", type=float, default=0.2,
                        help="fraction of requests that are one-file uploads")
    parser.add_argument("--gallery", type=int, default=200, help="seed crops before the run")
    parser.add_argument("--reindex-at", type=float, help="queue a full reindex at this second")
    parser.add_argument("--kill-worker-at", type=float, help="SIGKILL the worker at this second")
    parser.add_argument("--checkpoint", type=Path,
                        help="model checkpoint (default: the untrained tiny model, written to "
                        "the work folder; pass models/checkpoints/default.pt for the bundled one)")
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--bursts", type=int, nargs="+", default=[],
                        help="overload run: a search burst of each of these client counts")
    parser.add_argument("--burst-seconds", type=float, default=10)
    parser.add_argument("--freeze", type=float, default=0,
                        help="overload run: freeze PostgreSQL this many seconds (needs "
                        "--postgres)")
    parser.add_argument("--freeze-clients", type=int, default=16)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL where a throwaway "
                        "database is made, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/"
                        "postgres")
    args = parser.parse_args()
    if args.bursts or args.freeze:
        if not all(1 <= c <= MAX_BURST_CLIENTS for c in args.bursts + [args.freeze_clients]):
            parser.error(f"bounded: 1-{MAX_BURST_CLIENTS} clients a burst")
        if not (1 <= args.burst_seconds <= MAX_SECONDS and 0 <= args.freeze <= MAX_SECONDS):
            parser.error(f"bounded: 1-{MAX_SECONDS} seconds a burst or freeze")
        if args.freeze and not args.postgres:
            parser.error("--freeze needs --postgres (the frozen database is a PostgreSQL)")
        overload(args)
        return
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.seconds <= MAX_SECONDS):
        parser.error(f"bounded: 1-{MAX_CLIENTS} clients, 1-{MAX_SECONDS} seconds")

    work = args.work or Path(tempfile.mkdtemp(prefix="tbps-load-bench-"))
    checkpoint = args.checkpoint.resolve() if args.checkpoint else tiny_checkpoint(work)
    env = prepare(work, checkpoint, args.gallery)
    machine = environment()
    server, base = start_server(env, work / "server.log")
    run, stop = Run(), threading.Event()
    try:
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(base, run, c + 1, stop,
                                                         args.upload_share, started))
                   for c in range(args.clients)]
        threads.append(threading.Thread(target=faults, args=(base, run, server, started, stop,
                                                             args.reindex_at,
                                                             args.kill_worker_at)))
        for t in threads:
            t.start()
        stop.wait(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        wall = time.perf_counter() - started
        queue = drain(base, args.drain_timeout)
        ready = httpx.get(f"{base}/readyz", timeout=30).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    acknowledged = {r.crop_id for r in run.records if r.kind == "upload" and r.status == 200
                    and r.crop_id is not None}
    rows = summarise(run, wall)
    result = {"benchmark": "load", "machine": machine, "clients": args.clients,
              "seconds": round(wall, 1), "upload_share": args.upload_share,
              "gallery": args.gallery, "checkpoint": str(checkpoint),
              "model": "tiny-clip (untrained)" if not args.checkpoint else str(args.checkpoint),
              "events": run.events, "queue_after": queue, "readyz_after": ready,
              "kinds": rows, "upload_outcomes": Counter(r.outcome for r in run.records
                                                        if r.kind == "upload" and r.outcome),
              "reconciliation": reconcile(env, acknowledged),
              "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "server_log": str(work / "server.log")}
    out = args.out or ROOT / "bench" / "results" / f"load_{args.clients}c_{int(args.seconds)}s.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=dict) + "\n")
    print(format_table(rows, [
        ("kind", lambda r: r["kind"]), ("requests", lambda r: r["requests"]),
        ("req/s", lambda r: r["rps"]), ("p50 ms", lambda r: r["p50_ms"]),
        ("p95 ms", lambda r: r["p95_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
        ("5xx", lambda r: r["5xx"]), ("conn errors", lambda r: r["conn_errors"]),
        ("statuses", lambda r: ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()))]))
    print("events:", json.dumps(run.events), "| queue after:", json.dumps(queue, default=dict))
    print("reconciliation:", json.dumps(result["reconciliation"]))
    print(f"{machine_line(machine)}; wrote {out}")


if __name__ == "__main__":
    main()
