"""Inference engines side by side on one checkpoint, in one run (issue 13).

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_bench.py [models/checkpoints/default.pt]

Image tower throughput (best of ``--repeats`` batches of ``--batch`` preprocessed images) and
single-query text latency (p50 / p90 over ``--queries`` captions) for torch eager fp32, torch
bfloat16 autocast, ONNX Runtime fp32 and ONNX Runtime with the text tower int8-quantised
(dynamic quantisation of its weights), each with the max abs difference of its vectors from
torch fp32. One thread throughout (``--threads``). Writes
``bench/results/engine_<config name>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.envinfo import environment, format_table, machine_line  # noqa: E402
from models.factory import DEFAULT_CHECKPOINT, file_sha256, load_model  # noqa: E402
from models.onnx_encoder import OnnxEncoder, int8_text_graph, open_session, token_feed  # noqa: E402
from models.torch_encoder import TorchEncoder  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUERIES = ["a man in a red coat and blue jeans carrying a black backpack",
           "a woman with long hair wearing a white dress and sandals",
           "a young man in a grey hoodie, black trousers and white sneakers",
           "a girl wearing a yellow shirt and a short blue skirt"]

ImageFn = Callable[[torch.Tensor], np.ndarray]
TextFn = Callable[[list[str]], np.ndarray]


def bf16_towers(model) -> tuple[ImageFn, TextFn]:
    def run(fn, x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(x).float().numpy()

    return (lambda x: run(model.image_features, x),
            lambda texts: run(model.text_features, model.tokenize(texts)))


def int8_text(model, text_graph: Path, threads: int) -> TextFn:
    """The exported text graph with its weights dynamically quantised to int8 (the engine's
    ``TBPS_ENGINE_PRECISION=int8`` graph, cached beside the float32 one)."""
    session = open_session(int8_text_graph(text_graph), threads)
    return lambda texts: session.run(None, token_feed(model.tokenize(texts)))[0]


def throughput(image_fn: ImageFn, images: torch.Tensor, repeats: int) -> float:
    image_fn(images[:2])  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        image_fn(images)
        best = max(best, len(images) / (time.perf_counter() - started))
    return best


def latency_ms(text_fn: TextFn, queries: int) -> dict[str, float]:
    for text in QUERIES:  # warm-up
        text_fn([text])
    times = []
    for i in range(queries):
        started = time.perf_counter()
        text_fn([QUERIES[i % len(QUERIES)]])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))]}


def engines(path: Path, threads: int, folder: Path) -> tuple[dict, float]:
    """name -> (image fn or None, text fn); and the seconds the ONNX export took."""
    model, _ = load_model(path)
    sha = file_sha256(path)
    eager = TorchEncoder(model, sha, device="cpu")
    started = time.perf_counter()
    onnx = OnnxEncoder(model, sha, folder, threads=threads)
    export_s = time.perf_counter() - started
    found = {"torch eager fp32": (eager.encode_image, eager.encode_text),
             "torch bf16 autocast": bf16_towers(model),
             "onnxruntime fp32": (onnx.encode_image, onnx.encode_text)}
    if "text" in onnx.paths:
        found["onnxruntime int8 text"] = (None, int8_text(model, onnx.paths["text"],
                                                           threads))
    return found, export_s


def measure(fns: tuple, reference: tuple[np.ndarray, np.ndarray], images: torch.Tensor,
            args: argparse.Namespace) -> dict:
    image_fn, text_fn = fns
    row: dict = {"text_latency_ms": latency_ms(text_fn, args.queries),
                 "text_max_abs_diff": float(np.abs(text_fn(QUERIES) - reference[1]).max())}
    if image_fn is not None:
        row["images_per_s"] = throughput(image_fn, images, args.repeats)
        row["image_max_abs_diff"] = float(np.abs(image_fn(images[:8]) - reference[0]).max())
    return row


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tbps-engine-bench-") as folder:
        found, export_s = engines(args.checkpoint, args.threads, Path(folder))
        model_images = torch.randn(args.batch, 3, *load_model(args.checkpoint)[0].config.image_size,
                                   generator=torch.Generator().manual_seed(0))  # (N, 3, H, W)
        eager_image, eager_text = found["torch eager fp32"]
        reference = (eager_image(model_images[:8]), eager_text(QUERIES))
        rows = {name: measure(fns, reference, model_images, args) for name, fns in found.items()}
    return {"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
            "batch": args.batch, "threads": args.threads, "onnx_export_s": export_s,
            "engines": rows, "environment": environment()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    name = load_model(args.checkpoint)[0].config.name
    out = args.out or RESULTS / f"engine_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [{"engine": k, **v} for k, v in result["engines"].items()]
    print(format_table(rows, [
        ("engine", lambda r: r["engine"]),
        ("images/s", lambda r: r.get("images_per_s")),
        ("image max abs diff", lambda r: r.get("image_max_abs_diff")),
        ("text p50 ms", lambda r: r["text_latency_ms"]["p50"]),
        ("text p90 ms", lambda r: r["text_latency_ms"]["p90"]),
        ("text max abs diff", lambda r: r["text_max_abs_diff"]),
    ]))
    print(f"{name}, batch {args.batch}, {args.threads} thread(s); ONNX export "
          f"{result['onnx_export_s']:.1f} s; {machine_line(result['environment'])}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
