"""The prepared GPU run (bench/gpu_bench.sh): indexing crops/s end to end, text query latency
and search over many vectors, on one device, written as JSON.

    python -m bench.gpu_bench --device cuda --out bench/results/gpu_h200.json
    python -m bench.gpu_bench --device cpu --short   # the CPU path, as the test suite runs it

1. Indexing: crop files (the demo gallery, repeated up to ``--crops``) are read in a thread
   pool, decoded and resized on the device (``indexer.device_decode``: nvjpeg on CUDA) and
   encoded by the torch engine (float16 autocast on CUDA); crops/s over the whole loop, decode
   included, beside decode alone and encode alone on the same batches.
2. Text queries: one description at a time, p50/p99 ms.
3. Search: ``--vectors`` synthetic vectors of the model's layout (``bench.search_bench``),
   published and loaded through the production path (faiss-gpu when installed), searched one
   query at a time: recall@10 against exact search and p50/p99 ms per spec.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.envinfo import environment, format_table, machine_line
from bench.search_bench import build, captions, ground_truth, measure, specs_for, synthetic
from indexer.device_decode import decode_resize
from indexer.encode import encode_batch
from service.config import DEFAULT_DEMO_GALLERY

log = logging.getLogger("gpu_bench")
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def crop_files(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}")
    return [files[i % len(files)] for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def indexing(encoder, files: list[Path], batch: int, threads: int) -> dict[str, Any]:
    """Files -> vectors, batch by batch; reading the next batch overlaps with this one."""
    device = torch.device(encoder.device)
    batches = [list(enumerate(files[i : i + batch])) for i in range(0, len(files), batch)]

    def read(chunk):
        return [(i, p.read_bytes()) for i, p in chunk]

    decode_s = encode_s = 0.0
    done = failed = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pending = pool.submit(read, batches[0])
        for k in range(len(batches)):
            items = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(read, batches[k + 1])
            mark = time.perf_counter()
            decoded = decode_resize(items, encoder.preprocess, device)
            _sync(device)
            decode_s += time.perf_counter() - mark
            mark = time.perf_counter()
            encode_batch(encoder, decoded.images)  # (B, D), back on the host
            encode_s += time.perf_counter() - mark
            done, failed = done + len(decoded.ids), failed + len(decoded.failed)
    wall = time.perf_counter() - started
    return {"crops": done, "failed": failed, "batch": batch, "seconds": round(wall, 2),
            "crops_per_s": round(done / wall, 1),
            "decode_only_crops_per_s": round(done / max(decode_s, 1e-9), 1),
            "encode_only_crops_per_s": round(done / max(encode_s, 1e-9), 1)}


def text_latency(encoder, n: int) -> dict[str, float]:
    texts = captions(n + 5, seed=3)
    for t in texts[:5]:
        encoder.encode_text([t])  # warm up (CUDA kernels, tokenizer)
    ms = []
    for t in texts[5:]:
        mark = time.perf_counter()
        encoder.encode_text([t])
        ms.append((time.perf_counter() - mark) * 1000)
    return {"queries": n, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def search_rows(encoder, n: int, queries: int, specs: list[str], work: Path) -> list[dict]:
    espec = encoder.spec.to_dict()
    vectors = work / f"synthetic-{n}.npy"
    qvecs = synthetic(n, queries, espec, vectors)
    truth = ground_truth(np.load(vectors, mmap_mode="r"), qvecs, 10)
    rows = []
    for factory in specs_for(n, specs):
        slug = factory.replace(",", "_")
        live, build_s = build(work / slug, vectors, factory, espec)
        m = measure(live, qvecs, truth, [], None)
        rows.append({"vectors": n, "spec": factory, "build_s": round(build_s, 1), **m})
        del live
    vectors.unlink()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from models.factory import load_encoder

    encoder = load_encoder(Path(args.checkpoint) if args.checkpoint else None, args.device,
                           engine="torch")
    encoder.batch_size = args.batch
    work = Path(args.work or tempfile.mkdtemp(prefix="tbps-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files = crop_files(Path(args.images), args.crops)
    indexing(encoder, files[: args.batch * 2], args.batch, args.threads)  # warm up
    index = indexing(encoder, files, args.batch, args.threads)
    log.info("indexing: %s", index)
    text = text_latency(encoder, args.text_queries)
    log.info("text: %s", text)
    search = search_rows(encoder, args.vectors, args.queries, args.spec or ["Flat", "auto"],
                         work)
    return {"what": __doc__.split("\n\n")[0], "device": str(encoder.device),
            "model": encoder.spec.name, "indexing": index, "text_query": text,
            "search": search, "environment": environment()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--checkpoint", help="default: the bundled model")
    parser.add_argument("--images", default=str(DEFAULT_DEMO_GALLERY))
    parser.add_argument("--crops", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=8, help="file readers")
    parser.add_argument("--text-queries", type=int, default=200)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--spec", action="append", help="index specs (default: Flat, auto)")
    parser.add_argument("--short", action="store_true",
                        help="a small run (the test suite's): 64 crops, 20k vectors")
    parser.add_argument("--work", help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args(argv)
    if args.short:
        args.crops, args.batch, args.text_queries = 64, 16, 10
        args.vectors, args.queries = 20_000, 20
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    i, t = result["indexing"], result["text_query"]
    print(format_table([i], [("device", lambda _: result["device"]),
                             ("crops", lambda r: r["crops"]),
                             ("crops/s end to end", lambda r: r["crops_per_s"]),
                             ("decode only", lambda r: r["decode_only_crops_per_s"]),
                             ("encode only", lambda r: r["encode_only_crops_per_s"]),
                             ("text p50 ms", lambda _: t["p50_ms"])]))
    print(format_table(result["search"], [
        ("vectors", lambda r: r["vectors"]), ("spec", lambda r: r["spec"]),
        ("recall@10", lambda r: r["recall@10"]), ("p50 ms", lambda r: r["search_ms"]["p50"]),
        ("p99 ms", lambda r: r["search_ms"]["p99"]), ("build s", lambda r: r["build_s"])]))
    print(f"{machine_line(result['environment'])}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
