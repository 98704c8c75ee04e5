"""Query encoding latency and image encoding throughput of tbps checkpoints on this CPU.

    .venv/bin/python bench/model_bench.py runs/vfe-tps-effl0-minilm/model.pt ... [--threads 1]

Writes ``bench/results/model_<config name>.json`` per checkpoint: inference parameters (the
exported encoder's, training-only heads excluded), export dimension, single-text query latency
(median / p90 over ``--queries`` captions, after warm-up) and image throughput (preprocessed
batches of ``--batch`` images at the model's input size, best of ``--repeats``), plus the
dev metrics the trainer stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.envinfo import cpu_model, format_table  # noqa: E402
from models.factory import load_encoder, read_checkpoint  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUERIES = ["a man in a red coat and blue jeans carrying a black backpack",
           "a woman with long hair wearing a white dress and sandals",
           "a young man in a grey hoodie, black trousers and white sneakers",
           "a girl wearing a yellow shirt and a short blue skirt"]


def inference_parameters(model: torch.nn.Module) -> int:
    """Parameters of the exported encoder: training-only heads (as each family names them)."""
    prefixes = getattr(model, "training_only_prefixes", None) or getattr(
        sys.modules[type(model).__module__], "TRAINING_ONLY_PREFIXES", ())
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefixes))


def query_latency_ms(encoder, queries: int) -> dict[str, float]:
    for text in QUERIES:  # warm-up
        encoder.encode_text([text])
    times = []
    for i in range(queries):
        started = time.perf_counter()
        encoder.encode_text([QUERIES[i % len(QUERIES)]])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))]}


def image_throughput(encoder, batch: int, repeats: int) -> float:
    images = torch.randn(batch, 3, *encoder.spec.image_size)  # (N, 3, H, W) preprocessed
    encoder.encode_image(images[:2])  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode_image(images)
        best = max(best, batch / (time.perf_counter() - started))
    return best


def bench(path: Path, args: argparse.Namespace) -> dict:
    payload = read_checkpoint(path)
    encoder = load_encoder(path, device="cpu")
    history = payload.get("extra", {}).get("history") or [{}]
    return {
        "model": encoder.spec.name, "family": payload["config"]["family"],
        "checkpoint": str(path), "checkpoint_sha256": encoder.spec.checkpoint_sha256,
        "params_inference": inference_parameters(encoder.model), "export_dim": encoder.spec.dim,
        "image_size": list(encoder.spec.image_size),
        "query_latency_ms": query_latency_ms(encoder, args.queries),
        "image_throughput_per_s": image_throughput(encoder, args.batch, args.repeats),
        "dev": {k: history[-1].get(k) for k in ("rank1", "rank5", "rank10", "mAP", "mINP")},
        "trained_steps": payload.get("extra", {}).get("step"),
        "threads": args.threads, "batch": args.batch, "cpu": cpu_model(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__, "date": datetime.now(UTC).isoformat(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.checkpoints:
        result = bench(path, args)
        out = RESULTS / f"model_{result['model']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        print(f"wrote {out}", flush=True)
    print(format_table(results, [
        ("model", lambda r: r["model"]), ("params", lambda r: f"{r['params_inference']:,}"),
        ("query ms median", lambda r: r["query_latency_ms"]["median"]),
        ("query ms p90", lambda r: r["query_latency_ms"]["p90"]),
        ("images/s", lambda r: r["image_throughput_per_s"])]))
    print(f"{cpu_model()}, {args.threads} torch thread(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
