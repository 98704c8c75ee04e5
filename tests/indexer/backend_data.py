"""Synthetic gallery rows for the backend tests: VGSG-shaped vectors (a unit global part and a
unit local block of two stripes), cameras, times (some unknown), heights, and the exact
references."""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.backends.base import Rows
from indexer.filters import InSet, Range, SearchFilter

GLOBAL, STRIPE = 16, 8
DIM = GLOBAL + 2 * STRIPE
T0 = 1_700_000_000.0  # seconds since the epoch of the first crop


def encoder_dict(sha: str = "c0ffee") -> dict[str, Any]:
    parts = [{"name": "global", "start": 0, "stop": GLOBAL, "group": "global"},
             {"name": "stripe_1", "start": GLOBAL, "stop": GLOBAL + STRIPE, "group": "local"},
             {"name": "stripe_2", "start": GLOBAL + STRIPE, "stop": DIM, "group": "local"}]
    return {"name": "synthetic", "dim": DIM, "checkpoint_sha256": sha, "image_size": [8, 4],
            "mean": [0.5] * 3, "std": [0.5] * 3, "parts": parts, "max_text_length": 256}


def unit_blocks(x: np.ndarray) -> np.ndarray:
    """(N, DIM) -> each row's global part and local block L2-normalised."""
    out = x.astype(np.float32).copy()
    for lo, hi in ((0, GLOBAL), (GLOBAL, DIM)):
        out[:, lo:hi] /= np.linalg.norm(out[:, lo:hi], axis=1, keepdims=True)
    return out


def make_rows(n: int, seed: int = 0, first_id: int = 1) -> Rows:
    rng = np.random.default_rng(seed)
    vectors = unit_blocks(rng.standard_normal((n, DIM)))
    times = T0 + np.arange(n, dtype=np.float64) * 60.0
    times[::7] = np.nan  # unknown times
    heights = rng.integers(20, 200, n).astype(np.int64)
    return Rows(np.arange(first_id, first_id + n, dtype=np.int64), vectors,
                {"camera_id": rng.integers(0, 4, n).astype(np.int64), "ts": times,
                 "height": heights})


def where(cameras: set[int] | None = None, time_from: float | None = None,
          time_to: float | None = None, min_height: int | None = None) -> SearchFilter:
    """A filter as the service builds it from a request's cameras, time range, min height."""
    conditions: list = [] if cameras is None else [InSet("camera_id", frozenset(cameras))]
    if time_from is not None or time_to is not None:
        conditions.append(Range("ts", time_from, time_to))
    if min_height is not None:
        conditions.append(Range("height", low=min_height))
    return SearchFilter(tuple(conditions))


def queries(q: int, seed: int = 99) -> np.ndarray:
    return unit_blocks(np.random.default_rng(seed).standard_normal((q, DIM)))


def exact_top(rows: Rows, query: np.ndarray, k: int,
              flt: SearchFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the exact top k among the rows that pass ``flt``."""
    keep = np.ones(len(rows), bool) if flt is None else flt.mask(rows.attributes)
    scores = rows.vectors[keep] @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return rows.ids[keep][order], scores[order]


def two_stage_top(rows: Rows, query: np.ndarray, k: int, candidates: int,
                  flt: SearchFilter | None = None) -> np.ndarray:
    """Ids of the exact two-stage answer: the global-part top ``candidates`` among the rows
    that pass, re-ranked on the full vectors."""
    keep = np.ones(len(rows), bool) if flt is None else flt.mask(rows.attributes)
    ids, vectors = rows.ids[keep], rows.vectors[keep]
    first = np.argsort(-(vectors[:, :GLOBAL] @ query[:GLOBAL]), kind="stable")[:candidates]
    full = vectors[first] @ query
    return ids[first][np.argsort(-full, kind="stable")[:k]]
