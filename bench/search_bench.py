"""Search latency (p50/p99, search alone and with text encoding) and recall@10 against exact
full-vector search, per index spec, through the production path (the FAISS backend's
``write_first_stage`` builds, ``IndexStore.load`` loads, ``LoadedIndex.search`` searches, one
query at a time).

    .venv/bin/python -m bench.search_bench --checkpoint /tmp/vgsg-effl0-minilm.pt \
        --real-index /tmp/bench-index-10k/data/index --sizes 100000 1000000 \
        --out bench/results/search_cpu.json

Data sets:
- "real": the vectors of an index built by ``bench.index_bench`` (model outputs of real crops),
  queried with the model's encodings of real CUHK-PEDES captions.
- "real-<n>" (``--real-sizes``): the real vectors topped up to n by ``augment``: each added row
  moves a random real crop a random share (up to 30 %) of the way towards another real crop,
  then rescales each part to the norm the model gives it. Added rows lie among real ones, as
  more crops of similar people would; the real rows are kept. Queries are real captions.
- "synthetic": vectors shaped like the model's (same dim and parts, each part unit-norm), drawn
  from a clustered latent: ~10 crops per identity; both parts are noisy projections of the
  crop's latent; queries are noisy projections of an identity. Their recall says how the
  index behaves, not how a model ranks people.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.envinfo import environment, format_table, machine_line, peak_rss_mib
from service.config import DEFAULT_DEMO_GALLERY

log = logging.getLogger("search_bench")
CAPTIONS = DEFAULT_DEMO_GALLERY.parent / "reid_raw.json"  # run from the repository root
LATENT = 64


# ---- data ----
def _parts_of(spec: dict) -> list[tuple[int, int]]:
    """Unit-norm blocks: one slice per group (the global part, the concatenated stripes)."""
    blocks: dict[str, list[int]] = {}
    for p in spec["parts"]:
        key = p.get("group") or p["name"]
        blocks.setdefault(key, [p["start"], p["stop"]])
        blocks[key][1] = p["stop"]
    return [tuple(b) for b in blocks.values()] or [(0, spec["dim"])]


def _project(latent: np.ndarray, proj: np.ndarray, blocks: list, rng, noise: float) -> np.ndarray:
    """(n, L) latents -> (n, D) vectors, each block a noisy projection, L2-normalised."""
    x = latent @ proj  # (n, D)
    x += noise * rng.standard_normal(x.shape, dtype=np.float32)
    for a, b in blocks:
        x[:, a:b] /= np.linalg.norm(x[:, a:b], axis=1, keepdims=True)
    return x


def synthetic(n: int, q: int, spec: dict, path: Path, seed: int = 0) -> np.ndarray:
    """Write (n, D) float16 vectors to ``path`` (a .npy); return (q, D) float32 queries."""
    rng = np.random.default_rng(seed)
    dim, blocks = spec["dim"], _parts_of(spec)
    proj = np.random.default_rng(99).standard_normal((LATENT, dim), dtype=np.float32)
    proj /= np.sqrt(LATENT)
    centres = rng.standard_normal((max(n // 10, 1), LATENT), dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for lo in range(0, n, 50_000):
        m = min(50_000, n - lo)
        who = rng.integers(0, len(centres), m)
        latent = centres[who] + 0.5 * rng.standard_normal((m, LATENT), dtype=np.float32)
        out[lo : lo + m] = _project(latent, proj, blocks, rng, 0.3)
    out.flush()
    latent = centres[rng.integers(0, len(centres), q)]
    latent += 0.7 * rng.standard_normal((q, LATENT), dtype=np.float32)  # text is vaguer
    return _project(latent, proj, blocks, rng, 0.4).astype(np.float32)


def augment(real: np.ndarray, n: int, spec: dict, path: Path, seed: int = 0,
            max_mix: float = 0.3) -> None:
    """Write ``real`` (R, D) topped up to (n, D) float16 rows to ``path`` (see the docstring
    at the top: chords between random pairs of real crops, each part rescaled)."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real, np.float32)
    blocks = _parts_of(spec)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, real.shape[1]))
    out[: min(n, len(real))] = real[:n]
    for lo in range(len(real), n, 50_000):
        m = min(50_000, n - lo)
        first = rng.integers(0, len(real), m)
        other = (first + rng.integers(1, max(len(real), 2), m)) % len(real)  # another crop
        a, b = real[first], real[other]
        x = a + rng.uniform(0, max_mix, (m, 1)).astype(np.float32) * (b - a)  # (m, D)
        for start, stop in blocks:  # each part keeps the norm of the real crop it came from
            norm = np.linalg.norm(a[:, start:stop], axis=1, keepdims=True)
            x[:, start:stop] *= norm / np.linalg.norm(x[:, start:stop], axis=1, keepdims=True)
        out[lo : lo + m] = x
    out.flush()


def ground_truth(full: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by full inner product over the stored float16 vectors."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(full), 100_000):
        s = queries @ np.asarray(full[lo : lo + 100_000], np.float32).T  # (Q, chunk)
        s_all = np.hstack([best_s, s])
        i_all = np.hstack([best_i, np.arange(lo, lo + s.shape[1])[None].repeat(len(s), 0)])
        top = np.argpartition(-s_all, min(k, s_all.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def global_recalls(full, queries, truth, start, stop, pools=(256, 1024)) -> dict[str, float]:
    """Recall@10 of ranking by the exact global part alone, and of re-ranking its exact top-C
    on the full vectors: the ceiling of a two-stage search with C candidates."""
    glob = ground_truth(np.asarray(full)[:, start:stop], queries[:, start:stop], max(pools))
    out = {"global_only_recall@10": recall(glob[:, :10], truth)}
    for c in pools:
        rows = glob[:, :c]  # (Q, C)
        scores = np.einsum("qd,qcd->qc", queries, np.asarray(full[np.sort(rows.ravel())],
                           np.float32)[np.argsort(np.argsort(rows.ravel()))].reshape(
                               *rows.shape, -1))
        best = np.take_along_axis(rows, np.argsort(-scores, axis=1)[:, :10], 1)
        out[f"exact_global_top{c}_rerank_recall@10"] = recall(best, truth)
    return {k: round(v, 4) for k, v in out.items()}


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[g >= 0]) & set(t)) / len(t)
                          for g, t in zip(got, truth, strict=True)]))


# ---- measuring ----
def build(folder: Path, vectors: Path, factory: str, encoder_spec: dict):
    """A published version of ``vectors`` (hard-linked, not copied) with this spec."""
    from indexer.backends.faiss_backend import write_first_stage
    from indexer.backends.faiss_store import IndexStore
    from indexer.spec import choose_spec

    store = IndexStore(folder)
    staging = store.staging_dir("v")
    os.link(vectors, staging / "vectors.npy")
    full = np.load(staging / "vectors.npy", mmap_mode="r")
    np.save(staging / "ids.npy", np.arange(len(full), dtype=np.int64))
    started = time.perf_counter()
    manifest = write_first_stage(staging, full, choose_spec(len(full), factory), encoder_spec)
    store.commit_staging(staging, "v", manifest)
    store.publish("v")
    live = store.load()
    if live.exact:
        live.base.flat()  # built on first use: count it in the build, not in a query
    return live, time.perf_counter() - started


def measure(live, queries: np.ndarray, truth: np.ndarray, texts: list[str], encoder,
            k: int = 10, text_queries: int = 30) -> dict[str, Any]:
    for q in queries[:5]:
        live.search(q[None], k)  # warm up
    search_ms, total_ms, got = [], [], []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, ids = live.search(q[None], k)
        search_ms.append((time.perf_counter() - t0) * 1000)
        got.append(ids[0])
        if encoder is not None and i < text_queries:  # text encoding is the slow part
            t0 = time.perf_counter()
            qv = encoder.encode_text([texts[i % len(texts)]])
            live.search(qv if qv.shape[1] == live.dim else q[None], k)
            total_ms.append((time.perf_counter() - t0) * 1000)
    out = {"queries": len(queries), "recall@10": round(recall(np.array(got), truth), 4),
           "search_ms": _pcts(search_ms)}
    if total_ms:
        out["text_plus_search_ms"] = _pcts(total_ms)
    return out


def _pcts(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3)}


# ---- data sets ----
def real_dataset(index_dir: Path, encoder, q: int, work: Path):
    from indexer.backends.faiss_store import IndexStore

    live = IndexStore(index_dir).load(use_gpu=False)
    vectors = work / "real.npy"
    np.save(vectors, np.asarray(live.full))
    texts = captions(q, seed=1)
    queries = encoder.encode_text(texts).astype(np.float32)  # (Q, D) real text encodings
    return vectors, queries, texts, live.manifest.encoder


def captions(q: int, seed: int = 0) -> list[str]:
    rows = json.loads(CAPTIONS.read_text())
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), q, replace=False)
    return [rows[i]["captions"][0] for i in pick]


def specs_for(n: int, requested: list[str]) -> list[str]:
    """"auto" -> the spec chosen for n; "{nlist}" -> the automatic number of lists."""
    from indexer.spec import auto_nlist, choose_spec

    out = []
    for s in requested:
        s = choose_spec(n).factory if s == "auto" else s.replace("{nlist}", str(auto_nlist(n)))
        if s not in out:
            out.append(s)
    return out


def run_dataset(name: str, vectors: Path, queries: np.ndarray, texts: list[str], encoder,
                encoder_spec: dict, specs: list[str], work: Path, grid: list[tuple[int, int]],
                flat_queries: int) -> list[dict]:
    from indexer.spec import global_slice

    full = np.load(vectors, mmap_mode="r")
    truth = ground_truth(full, queries, 10)
    start, stop = global_slice(encoder_spec["parts"], encoder_spec["dim"])
    ceilings = global_recalls(full, queries, truth, start, stop)
    log.info("%s: %s", name, ceilings)
    rows = []
    for factory in specs:
        slug = factory.replace(",", "_").replace(":", "-")
        live, build_s = build(work / f"{name}-{slug}", vectors, factory, encoder_spec)
        settings = [(None, None)] if live.exact else grid
        for nprobe, cand in settings:
            if nprobe:
                live.retune(nprobe=nprobe, candidates=cand)
            nq = flat_queries if live.exact and len(full) >= 500_000 else len(queries)
            m = measure(live, queries[:nq], truth[:nq], texts, encoder)
            row = {"dataset": name, "n": len(full), "dim": int(full.shape[1]), "spec": factory,
                   "nprobe": nprobe, "candidates": cand, "build_s": round(build_s, 1),
                   **m, **ceilings,
                   "loadavg_1min": round(os.getloadavg()[0], 2)}
            log.info("%s", row)
            rows.append(row)
        del live
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="encoder for text queries (and its dims)")
    parser.add_argument("--real-index", help="index dir from bench.index_bench --keep")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--specs", nargs="*", default=["Flat", "IVF{nlist}_HNSW32,SQ8",
                                                       "IVF{nlist}_HNSW32,PQ32"])
    parser.add_argument("--real-specs", nargs="*", default=["Flat", "IVF128_HNSW32,SQ8"])
    parser.add_argument("--real-sizes", type=int, nargs="*", default=[],
                        help="the real vectors augmented to these sizes (see augment)")
    parser.add_argument("--real-size-specs", nargs="*", default=["Flat", "IVF{nlist}_HNSW32,SQ8"],
                        help="specs for --real-sizes")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--flat-queries", type=int, default=40, help="for Flat at >= 500k")
    parser.add_argument("--grid", default="32x256,64x512,64x1024,128x2048",
                        help="nprobe x candidates settings for two-stage specs")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default="bench/results/search_cpu.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from models.factory import load_encoder

    encoder = load_encoder(Path(args.checkpoint) if args.checkpoint else None, "cpu")
    grid = [tuple(int(x) for x in g.split("x")) for g in args.grid.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="tbps-search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, texts = [], captions(args.queries)
    if args.real_index:
        vectors, queries, rtexts, espec = real_dataset(Path(args.real_index), encoder,
                                                       args.queries, work)
        rows += run_dataset("real", vectors, queries, rtexts, encoder, espec, args.real_specs,
                            work, grid, args.flat_queries)
        for n in args.real_sizes:
            grown = work / f"real-{n}.npy"
            augment(np.load(vectors, mmap_mode="r"), n, espec, grown)
            rows += run_dataset(f"real-{n}", grown, queries, rtexts, encoder, espec,
                                specs_for(n, args.real_size_specs), work, grid,
                                args.flat_queries)
            grown.unlink()
    espec = encoder.spec.to_dict()
    for n in args.sizes:
        vectors = work / f"synthetic-{n}.npy"
        queries = synthetic(n, args.queries, espec, vectors)
        rows += run_dataset(f"synthetic-{n}", vectors, queries, texts, encoder, espec,
                            specs_for(n, args.specs), work, grid, args.flat_queries)
        vectors.unlink()
    result = {"what": __doc__.split("\n\n")[0], "encoder": espec["name"],
              "checkpoint": args.checkpoint, "rows": rows, "peak_rss_mib": peak_rss_mib(),
              "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows, [
        ("data", lambda r: r["dataset"]), ("spec", lambda r: r["spec"]),
        ("nprobe", lambda r: r["nprobe"]), ("candidates", lambda r: r["candidates"]),
        ("build s", lambda r: r["build_s"]), ("recall@10", lambda r: r["recall@10"]),
        ("search p50 ms", lambda r: r["search_ms"]["p50"]),
        ("search p99 ms", lambda r: r["search_ms"]["p99"]),
        ("text+search p50 ms", lambda r: r.get("text_plus_search_ms", {}).get("p50")),
        ("load", lambda r: r["loadavg_1min"])]))
    print(f"{machine_line(result['environment'])}; wrote {args.out}")


if __name__ == "__main__":
    main()
