"""End-to-end indexing throughput: image files -> ingest -> ``build_full`` -> published index.

    .venv/bin/python -m bench.index_bench --n 10000 --checkpoint runs/tiny/model.pt \
        --keep /tmp/bench-index --out bench/results/index_cpu_vgsg-effl0.json

``--engine``, ``--batch-size`` and ``--workers`` may be repeated: every combination rebuilds the
same ingested gallery in the same run (the first one is the baseline the others are set beside).

Crops come from a folder of person images (CUHK-PEDES by default). When ``--n`` exceeds the
files there, mirrored and cropped copies are added (real images, real model outputs; say so).
Reports crops/s of the build (reader -> encoder -> writer -> index -> publish), seconds per
stage, peak memory, and the machine's load (the cores may be shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from bench.envinfo import environment, format_table, machine_line, peak_rss_mib
from service.config import DEFAULT_DEMO_GALLERY

DEFAULT_IMAGES = DEFAULT_DEMO_GALLERY  # run from the repository root


def make_gallery(source: Path, folder: Path, n: int) -> dict[str, int]:
    """Copy up to ``n`` images; top up with mirrored, then cropped, variants."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"original": 0, "mirrored": 0, "cropped": 0}
    variants = [("original", lambda im: im), ("mirrored", ImageOps.mirror),
                ("cropped", lambda im: im.crop((2, 4, im.width - 2, im.height - 4)))]
    for kind, transform in variants:
        for i, path in enumerate(files):
            if sum(counts.values()) >= n:
                return counts
            with Image.open(path) as im:
                transform(im.convert("RGB")).save(folder / f"{kind}-{i:06d}.png")
            counts[kind] += 1
    return counts


def load_bench_encoder(args: argparse.Namespace, engine: str, batch_size: int):
    from models.factory import create_model, load_encoder
    from models.torch_encoder import TorchEncoder

    if args.config:  # architecture only (random weights): throughput of e.g. vgsg-rn50-clip
        return TorchEncoder(create_model(args.config), f"random-{args.config}",
                            device=args.device, batch_size=batch_size)
    encoder = load_encoder(Path(args.checkpoint) if args.checkpoint else None, args.device,
                           engine=engine)
    encoder.batch_size = batch_size
    return encoder


def run(args: argparse.Namespace) -> list[dict]:
    """Ingest once, then one full build per (engine, batch size, workers)."""
    from service.config import Settings
    from service.jobs.ingest import ingest_folder
    from service.store.db import migrate, session_scope

    work = Path(args.keep or tempfile.mkdtemp(prefix="tbps-index-bench-"))
    settings = Settings(data_dir=work / "data", environment="test", device=args.device)
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    counts = make_gallery(Path(args.images), work / "gallery", args.n)
    started = time.perf_counter()
    with session_scope(settings.resolved_database_url) as session:
        ingest_folder(session, settings, work / "gallery", camera="bench")
    ingest_s = time.perf_counter() - started
    return [{**one_build(args, settings, engine, batch, workers), "ingest_seconds":
             round(ingest_s, 2), "images": {"source": str(args.images), **counts}}
            for engine in args.engine or ["auto"] for batch in args.batch_size or [64]
            for workers in args.workers or [None]]


def one_build(args: argparse.Namespace, settings, engine: str, batch_size: int,
              workers: int | None) -> dict:
    from indexer.pipeline import ReadOptions
    from indexer.reader import default_workers
    from service.jobs.index_jobs import build_full
    from service.store.db import session_scope

    encoder = load_bench_encoder(args, engine, batch_size)
    options = ReadOptions(batch_size=batch_size, workers=workers)
    with session_scope(settings.resolved_database_url) as session:
        report = build_full(session, encoder, settings.resolved_crops_dir,
                            settings.resolved_index_dir, options=options)
    return {
        "what": "end-to-end build_full from image files (decode, resize, encode, write shards, "
                "build index, publish)",
        "encoder": {"name": encoder.spec.name, "dim": encoder.spec.dim,
                    "image_size": list(encoder.spec.image_size),
                    "checkpoint": args.checkpoint, "config": args.config,
                    "engine": type(encoder).__name__, "device": str(encoder.device),
                    "batch_size": batch_size},
        "reader_workers": options.workers if options.workers is not None else default_workers(),
        "crops": report.indexed + len(report.failed),
        "failed": len(report.failed), "build_seconds": round(report.seconds, 2),
        "crops_per_second": round(report.rate, 1),
        "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
        "peak_rss_mib": peak_rss_mib(), "index_version": report.version,
        "index_dir": str(settings.resolved_index_dir) if args.keep else None,
        "environment": environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--n", type=int, default=2000, help="crops to index")
    parser.add_argument("--checkpoint", help="tbps checkpoint (default: the bundled model)")
    parser.add_argument("--config", help="model config with random weights instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--engine", action="append", choices=["auto", "torch", "onnx"],
                        help="inference engine(s) (default: auto)")
    parser.add_argument("--batch-size", type=int, action="append", help="default: 64")
    parser.add_argument("--workers", type=int, action="append",
                        help="reader processes (default: one per spare core)")
    parser.add_argument("--keep", help="work folder to keep (its index feeds search_bench)")
    parser.add_argument("--out", help="write the result JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = run(args)
    base = runs[0]["crops_per_second"]
    for row in runs:
        row["x_first"] = round(row["crops_per_second"] / base, 2) if base else None
    result = runs[0] if len(runs) == 1 else {"runs": runs, "environment": environment()}
    text = json.dumps(result, indent=2)
    print(format_table(runs, [
        ("encoder", lambda r: r["encoder"]["name"]), ("engine", lambda r: r["encoder"]["engine"]),
        ("batch", lambda r: r["encoder"]["batch_size"]), ("workers", lambda r: r["reader_workers"]),
        ("device", lambda r: r["encoder"]["device"]),
        ("crops", lambda r: r["crops"]), ("failed", lambda r: r["failed"]),
        ("crops/s", lambda r: r["crops_per_second"]), ("x first", lambda r: r["x_first"]),
        ("build s", lambda r: r["build_seconds"]),
        ("read/encode s", lambda r: f"{r['stage_seconds'].get('read', 0)}/"
                                    f"{r['stage_seconds'].get('encode', 0)}"),
        ("peak RSS MiB", lambda r: round(r["peak_rss_mib"]["self"]
                                         + r["peak_rss_mib"]["children"], 1))]))
    print(machine_line(runs[-1]["environment"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
