"""FAISS (the embedded default) against Milvus (a standalone server on this machine) on the
same synthetic gallery: build time, p50/p99 single-query search latency without and with a
camera + time filter, recall@10 against exact full-vector search under the same filter.

    .venv/bin/python -m bench.scaling_bench --n 200000 --out bench/results/scaling_200k.json
    .venv/bin/python -m bench.scaling_bench --n 1000000 --backends faiss --work bench/.work
    .venv/bin/python -m bench.scaling_bench --n 1000000 --backends milvus --work bench/.work

Vectors are shaped like the default model's (1280 = global 256 + four 256 stripes) and
clustered (``bench.search_bench.synthetic``), so recall means something. Both backends use
the spec the indexer picks for N: a first stage over the global part (FAISS
``IVF<nlist>_HNSW32,SQ8``; Milvus ``IVF_SQ8`` with the same nlist and nprobe), its 256
candidates re-ranked on full vectors. FAISS filters by the crop ids the service's catalog
would pass (``allowed_ids``); Milvus evaluates the filter expression inside the engine.
``--milvus-read Strong,Session`` runs Milvus once per consistency level of its searches (the
service's ``TBPS_MILVUS_CONSISTENCY``); each Milvus result with a first stage also times its
two stages alone (``stages_ms``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from bench.envinfo import environment, format_table, machine_line, peak_rss_mib
from bench.search_bench import build, ground_truth, recall, synthetic
from indexer.backends.base import Rows
from indexer.filters import InSet, Range, SearchFilter
from indexer.spec import choose_spec

log = logging.getLogger("scaling_bench")
CAMERAS = 100
DAY = 86_400.0
T0 = 1_700_000_000.0


def model_spec() -> dict[str, Any]:
    parts = [{"name": "global", "start": 0, "stop": 256, "group": "global"}]
    parts += [{"name": f"stripe_{i + 1}", "start": 256 * (i + 1), "stop": 256 * (i + 2),
               "group": "local"} for i in range(4)]
    return {"name": "synthetic-vgsg", "dim": 1280, "checkpoint_sha256": "synthetic",
            "image_size": [384, 128], "mean": [0.5] * 3, "std": [0.5] * 3, "parts": parts}


def metadata(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(cameras (N,), times (N,)): 100 cameras, 30 days of crops."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, CAMERAS, n), T0 + rng.uniform(0, 30 * DAY, n)


FILTER = SearchFilter((InSet("camera_id", frozenset(range(0, CAMERAS, 5))),
                       Range("ts", T0 + 5 * DAY, T0 + 20 * DAY)))  # 20 of 100 cameras, half
# the month: ~10%


def milvus_factory(faiss_factory: str) -> str:
    """The Milvus spec matching the FAISS one the indexer picks: Flat, or IVF_SQ8 with the
    same number of lists (``milvus_first_stage`` then probes the same sixth of them)."""
    if faiss_factory == "Flat":
        return "Flat"
    return f"IVF_SQ8,nlist={int(faiss_factory.split('_')[0].removeprefix('IVF'))}"


def filtered_truth(full: np.ndarray, queries: np.ndarray, keep: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(keep)
    return rows[ground_truth(full[rows], queries, 10)]


def timed_queries(search, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    for q in queries[:5]:
        search(q[None])  # warm up
    ms, got = [], []
    for q in queries:
        t0 = time.perf_counter()
        got.append(search(q[None]))
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, np.array(got)


def summary(name: str, build_s: float, runs: dict[str, tuple[list[float], np.ndarray]],
            truths: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": name, "build_s": round(build_s, 1)}
    for key, (ms, got) in runs.items():
        out[key] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                    "p99_ms": round(float(np.percentile(ms, 99)), 2),
                    "recall@10": round(recall(got, truths[key]), 4)}
    return out


def run_faiss(folder: Path, vectors: Path, queries: np.ndarray, keep: np.ndarray,
              truths: dict[str, np.ndarray]) -> dict[str, Any]:
    live, seconds = build(folder, vectors, None, model_spec())
    allowed = np.flatnonzero(keep).astype(np.int64)
    runs = {"unfiltered": timed_queries(lambda q: live.search(q, 10)[1][0], queries),
            "filtered": timed_queries(lambda q: live.search(q, 10, allowed)[1][0], queries)}
    return summary(f"faiss {live.manifest.factory}", seconds, runs, truths)


def run_milvus(work: Path, full: np.ndarray, cameras: np.ndarray, times: np.ndarray,
               queries: np.ndarray, truths: dict[str, np.ndarray], factory: str,
               uri: str | None = None,
               read_levels: tuple[str, ...] = ("Session",),
               settle_s: float = 0.0, quiet_load: float = 0.5) -> list[dict[str, Any]]:
    """One build on the Milvus at ``uri`` (or an embedded standalone server started here),
    then, once the server is quiet (``settle``: it compacts the new segments meanwhile), the
    same queries through a backend searching at each of ``read_levels`` (the backend's
    ``read_consistency``): a row per level, each with the one build's time."""
    from indexer.backends.milvus_backend import MilvusBackend
    from indexer.backends.milvus_local import local_milvus

    with (nullcontext(uri) if uri else local_milvus(work / "milvus")) as uri:
        backend = MilvusBackend(root=work / "mwork", uri=uri, prefix="bench")
        started = time.perf_counter()
        batches = (Rows(np.arange(lo, min(lo + 20_000, len(full)), dtype=np.int64),
                        np.asarray(full[lo:lo + 20_000], np.float32),
                        {"camera_id": cameras[lo:lo + 20_000], "ts": times[lo:lo + 20_000]})
                   for lo in range(0, len(full), 20_000))
        version = backend.build(batches, total=len(full), encoder=model_spec(),
                                factory=factory)
        backend.publish(version)
        seconds = time.perf_counter() - started
        log.info("milvus build and publish: %.1f s; settling (at most %.0f s, until the 1-min "
                 "load average is below %.2f)", seconds, settle_s, quiet_load)
        waited = settle(settle_s, quiet_load)
        load_before = os.getloadavg()[0]
        log.info("settled after %.0f s, load %.2f", waited, load_before)
        results = []
        try:
            for level in read_levels:
                reader = MilvusBackend(root=work / "mwork", uri=uri, prefix="bench",
                                       read_consistency=level)
                view = reader.open()
                runs = {"unfiltered": timed_queries(lambda q, v=view: v.search(q, 10).ids[0],
                                                    queries),
                        "filtered": timed_queries(
                            lambda q, v=view: v.search(q, 10, filter=FILTER).ids[0], queries)}
                results.append(summary(f"milvus {factory} {level}", seconds, runs, truths))
                results[-1]["settle_s"] = round(waited, 1)
                results[-1]["loadavg_1min_before"] = load_before
                results[-1]["loadavg_1min_after"] = os.getloadavg()[0]
                reader.close()
                log.info("%s", results[-1])
            results[-1]["stages_ms"] = milvus_stages(backend.client, version, view.manifest,
                                                     queries[:40])
        finally:
            backend.drop_all()
            backend.close()
    return results


def settle(max_s: float, quiet_load: float, poll_s: float = 5.0) -> float:
    """Wait until the machine is quiet, the 1-minute load average below ``quiet_load`` (this
    process sleeps meanwhile, so the load is the server's own background work), for at most
    ``max_s`` seconds; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_s and os.getloadavg()[0] >= quiet_load:
        time.sleep(min(poll_s, max(0.0, max_s - (time.perf_counter() - started))))
    return time.perf_counter() - started


def milvus_stages(client: Any, version: str, manifest: Any,
                  queries: np.ndarray) -> dict[str, dict[str, float]]:
    """Where one search's time goes: the first-stage search alone and the full-vector fetch
    of its candidates alone (p50 / p99 ms over ``queries``), each at the backend's Strong
    consistency and at Bounded (no wait for the newest time tick)."""
    from indexer.backends.base import split_pointer
    from indexer.backends.milvus_spec import search_params

    stage = manifest.first_stage
    base = split_pointer(version)[0]
    if stage is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for level in ("Strong", "Bounded"):
        first, fetch = [], []
        for q in queries:
            t0 = time.perf_counter()
            hits = client.search(f"{base}_fs", data=[q[stage.start:stage.stop]],
                                 limit=stage.candidates, anns_field="vector",
                                 search_params=search_params(stage, stage.candidates),
                                 consistency_level=level)
            t1 = time.perf_counter()
            client.query(base, ids=[int(h["id"]) for h in hits[0]], output_fields=["vector"],
                         consistency_level=level)
            t2 = time.perf_counter()
            first.append((t1 - t0) * 1000)
            fetch.append((t2 - t1) * 1000)
        for name, ms in ((f"first_stage_{level}", first), (f"fetch_{level}", fetch)):
            out[name] = {"p50": round(float(np.percentile(ms, 50)), 2),
                         "p99": round(float(np.percentile(ms, 99)), 2)}
    return out


def gallery(work: Path, n: int, q: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(vectors (N, D) float16 memmap, queries (Q, D), exact truths) in ``work``, made once and
    reused by later runs there (FAISS and Milvus can then run one after the other)."""
    cached = work / f"gallery_{n}_{q}.npz"
    if cached.exists():
        data = np.load(cached)
        truths = {"unfiltered": data["unfiltered"], "filtered": data["filtered"]}
        return np.load(work / "vectors.npy", mmap_mode="r"), data["queries"], truths
    queries = synthetic(n, q, model_spec(), work / "vectors.npy")
    full = np.load(work / "vectors.npy", mmap_mode="r")
    cameras, times = metadata(n)
    truths = {"unfiltered": ground_truth(full, queries, 10),
              "filtered": filtered_truth(full, queries,
                                         FILTER.mask({"camera_id": cameras, "ts": times}))}
    np.savez(cached, queries=queries, **truths)
    return full, queries, truths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", default="faiss,milvus", help="comma-separated, run in turn")
    ap.add_argument("--work", type=Path, default=None, help="folder for the vectors and the "
                    "exact answers, kept for the next run (default: a temporary one)")
    ap.add_argument("--milvus-uri", default=None, help="a running Milvus (default: start the "
                    "embedded standalone server)")
    ap.add_argument("--milvus-read", default="Session", help="comma-separated consistency "
                    "levels of the Milvus searches, one Milvus run each (Strong,Session: both)")
    ap.add_argument("--milvus-settle", type=float, default=0.0, help="at most this many "
                    "seconds to wait after Milvus's build before timing (its compactions share "
                    "the machine), until the 1-min load average is below --quiet-load")
    ap.add_argument("--quiet-load", type=float, default=0.5, help="the load average that "
                    "ends --milvus-settle's wait")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scaling-bench-", dir=args.work) as tmp:
        work = args.work or Path(tmp)
        full, queries, truths = gallery(work, args.n, args.queries)
        cameras, times = metadata(args.n)
        keep = FILTER.mask({"camera_id": cameras, "ts": times})
        results = []
        for name in args.backends.split(","):
            if name == "faiss":
                results.append(run_faiss(Path(tmp) / "faiss", work / "vectors.npy", queries,
                                         keep, truths))
                log.info("%s", results[-1])
                continue
            results += run_milvus(Path(tmp), full, cameras, times, queries, truths,
                                  milvus_factory(choose_spec(args.n).factory), args.milvus_uri,
                                  tuple(args.milvus_read.split(",")), args.milvus_settle,
                                  args.quiet_load)
    report = {"n": args.n, "queries": args.queries, "filter_selectivity": float(keep.mean()),
              "results": results, "peak_rss_mib": peak_rss_mib(), "environment": environment()}
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


def print_table(report: dict[str, Any]) -> None:
    cols = [("backend", lambda r: r["backend"]), ("build s", lambda r: r["build_s"])]
    for key in ("unfiltered", "filtered"):
        cols += [(f"{key} p50 ms", lambda r, k=key: r[k]["p50_ms"]),
                 (f"{key} p99 ms", lambda r, k=key: r[k]["p99_ms"]),
                 (f"{key} recall@10", lambda r, k=key: r[k]["recall@10"])]
    print(f"N={report['n']:,}, {report['queries']} queries, filter keeps "
          f"{report['filter_selectivity']:.1%}; {machine_line(report['environment'])}")
    print(format_table(report["results"], cols))


if __name__ == "__main__":
    main()
