"""The first five minutes of an operator: `tbps demo` on an empty data dir, started from a
folder outside the repository, timed from the command to the first page, the first search
results, and the end of indexing.

    .venv/bin/python bench/first_start_bench.py --port 8141 --out bench/results/first_start.json

Polls GET / (the page), GET /status (indexing n of N) and POST /search once a second; prints
the timeline and writes it as JSON. The data dir is a fresh temporary folder unless --data-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
QUERY = "a woman in a red shirt and black trousers carrying a bag"


def _poll(base: str, started: float, marks: dict, timeline: list) -> bool:
    """One round of requests; returns True when the index job is done and results came."""
    now = round(time.perf_counter() - started, 1)
    try:
        page = httpx.get(base + "/", timeout=2)
    except httpx.TransportError:
        return False
    if page.status_code == 200:
        marks.setdefault("first_page_s", now)
    status = httpx.get(base + "/status", timeout=5).json()
    hits = httpx.post(base + "/search", json={"description": QUERY, "top_k": 10}, timeout=30)
    n_hits = len(hits.json().get("hits", [])) if hits.status_code == 200 else 0
    if n_hits:
        marks.setdefault("first_results_s", now)
        marks.setdefault("searchable_at_first_results", status["searchable"])
    indexing = status.get("indexing")
    timeline.append({"t_s": now, "searchable": status["searchable"], "crops": status["crops"],
                     "search_status": hits.status_code, "hits": n_hits,
                     "indexing": indexing["summary"] if indexing else None})
    print(json.dumps(timeline[-1]), flush=True)
    done = indexing is None and status["crops"] and status["searchable"] >= status["indexed"]
    if done and n_hits:
        marks.setdefault("indexed_s", now)
        return True
    return False


def thin(timeline: list[dict]) -> list[dict]:
    """The samples where something changed: crops, searchable count, search status, job."""
    kept: list[dict] = []
    for entry in timeline:
        key = (entry["crops"], entry["searchable"], entry["search_status"], bool(entry["hits"]),
               entry["indexing"] is None)
        if not kept or key != kept[-1]["_key"]:
            kept.append({**entry, "_key": key})
    return [{k: v for k, v in e.items() if k != "_key"} for e in kept]


def stop_process_group(proc: subprocess.Popen, term_wait_s: float = 30) -> None:
    """SIGTERM to the demo's process group (server, worker, reader processes), then SIGKILL:
    a worker finishes the chunk it is encoding before it exits."""
    for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8141)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--limit-s", type=float, default=900.0, help="give up after this long")
    parser.add_argument("--out", type=Path, default=None, help="write the timeline here")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="tbps-first-start-"))
    cwd = Path(tempfile.mkdtemp(prefix="tbps-elsewhere-"))  # not the repository
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(data_dir), TBPS_PORT=str(args.port))
    log = (data_dir.parent / f"{data_dir.name}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "tbps"), "demo"], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    marks: dict = {}
    timeline: list = []
    try:
        while time.perf_counter() - started < args.limit_s and proc.poll() is None:
            if _poll(f"http://127.0.0.1:{args.port}", started, marks, timeline):
                break
            time.sleep(1.0)
    finally:
        stop_process_group(proc)
    result = {"command": "tbps demo (from a temporary cwd, empty TBPS_DATA_DIR)", **marks,
              "log": log.name, "samples": len(timeline), "timeline": thin(timeline)}
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if "first_results_s" in marks else 1


if __name__ == "__main__":
    sys.exit(main())
