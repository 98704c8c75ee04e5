"""Retrieval evaluation on a dataset split, a match being the same person id.

- ``text`` mode: every caption of the split is a query, every image of the split is in the
  gallery (text-based person search).
- ``image`` mode: every image of the split queries all the other images of the split (search by
  example, person re-identification); a query's own image is never in its gallery.

``tbps eval --checkpoint PATH --dataset cuhk-pedes --root DIR --split SPLIT [--mode image] --json``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.cli_support import run_subcommand
from models.commands import register_eval as register_cli
from models.data.datasets import Record, read_dataset, select_split

log = logging.getLogger(__name__)




def rank_metrics(similarity: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray,
                 ks: Sequence[int] = (1, 5, 10), exclude: np.ndarray | None = None
                 ) -> dict[str, float]:
    """similarity (Q, G) -> Rank-k (CMC), mAP and mINP, in percent.

    AP averages precision at each positive's rank; INP = (number of positives) / (rank of the
    last positive) (Ye et al., 2021). Queries with no positive in the gallery are skipped.
    ``exclude`` (Q, G) bool: gallery items left out of that query's gallery (its own image).
    """
    if exclude is not None:  # ranked after every real item and never a match
        similarity = np.where(exclude, -np.inf, similarity)
    order = np.argsort(-similarity, axis=1, kind="stable")  # (Q, G)
    matches = gallery_pids[order] == query_pids[:, None]  # (Q, G) bool
    if exclude is not None:
        matches &= ~np.take_along_axis(exclude, order, axis=1)
    valid = matches.any(axis=1)
    matches = matches[valid]
    if not len(matches):
        raise ValueError("no query has a matching gallery item")
    first = matches.argmax(axis=1)  # (Q,) 0-based rank of the first match
    out = {f"rank{k}": float((first < k).mean() * 100) for k in ks}
    hits = np.cumsum(matches, axis=1)  # (Q, G)
    positions = np.arange(1, matches.shape[1] + 1)
    precision = hits / positions  # (Q, G)
    num_pos = matches.sum(axis=1)
    out["mAP"] = float(((precision * matches).sum(axis=1) / num_pos).mean() * 100)
    last = matches.shape[1] - np.argmax(matches[:, ::-1], axis=1)  # 1-based rank of last match
    out["mINP"] = float((num_pos / last).mean() * 100)
    return out


def encode_images(encoder: Any, records: Sequence[Record], batch_size: int = 64) -> np.ndarray:
    """The split's images -> (N, D) exported image vectors, in record order."""
    from PIL import Image

    gallery = []
    for start in range(0, len(records), batch_size):
        batch = []
        for r in records[start : start + batch_size]:
            with Image.open(r.image_path) as im:
                batch.append(encoder.preprocess(im.convert("RGB")))
        gallery.append(encoder.encode_image(torch.stack(batch)))
    return np.concatenate(gallery)  # (N, D)


def image_to_image_metrics(features: np.ndarray, pids: np.ndarray) -> dict[str, float | int]:
    """Every image queries all the others (its own image left out of its gallery)."""
    features, pids = np.asarray(features, dtype=np.float32), np.asarray(pids)
    metrics: dict[str, float | int] = dict(rank_metrics(
        features @ features.T, pids, pids, exclude=np.eye(len(pids), dtype=bool)))
    metrics.update(queries=int(sum((pids == p).sum() > 1 for p in pids)), gallery=len(pids) - 1)
    return metrics


def evaluate_encoder_images(encoder: Any, records: Sequence[Record], batch_size: int = 64
                            ) -> dict[str, float | int]:
    """Image-to-image retrieval on the split (``image`` mode)."""
    features = encode_images(encoder, records, batch_size)
    return image_to_image_metrics(features, np.asarray([r.pid for r in records]))


def evaluate_encoder(encoder: Any, records: Sequence[Record], batch_size: int = 64
                     ) -> dict[str, float | int]:
    """Encode the split's images (gallery) and captions (queries) and score them."""
    texts, query_pids = [], []
    for r in records:
        texts.extend(r.captions)
        query_pids.extend([r.pid] * len(r.captions))
    images = encode_images(encoder, records, batch_size)  # (G, D)
    queries = encoder.encode_text(texts)  # (Q, D)
    metrics: dict[str, float | int] = dict(rank_metrics(
        queries @ images.T, np.asarray(query_pids), np.asarray([r.pid for r in records])))
    metrics.update(queries=len(texts), gallery=len(records))
    return metrics


def evaluate_model(model: Any, records: Sequence[Record], batch_size: int = 64,
                   device: str = "cpu", mode: str = "text") -> dict[str, float | int]:
    """Evaluate an in-memory model (used by the trainer for dev metrics) on its device."""
    from models.torch_encoder import TorchEncoder

    was_training = model.training
    encoder = TorchEncoder(model, "in-training", device=device, batch_size=batch_size)
    evaluate = evaluate_encoder_images if mode == "image" else evaluate_encoder
    try:
        return evaluate(encoder, records, batch_size)
    finally:
        model.train(was_training)


def run_eval(args: argparse.Namespace) -> int:
    from models.factory import load_encoder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    records = select_split(read_dataset(args.dataset, args.root), args.split)
    started = time.time()
    encoder = load_encoder(args.checkpoint, device=args.device, engine=args.engine,
                           precision=args.precision)
    evaluate = evaluate_encoder_images if args.mode == "image" else evaluate_encoder
    metrics = evaluate(encoder, records, args.batch_size)
    log.info("evaluated %d queries in %.1fs", metrics["queries"], time.time() - started)
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:>8}: {value:.2f}" if isinstance(value, float) else f"{key:>8}: {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand("eval", register_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
