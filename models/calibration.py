"""Match confidence: served scores calibrated on dev into P(same person) (issue 26).

``tbps calibrate --checkpoint FILE --root DIR --split dev [--precision 0.9]`` writes
``<checkpoint stem>.calibration.json`` beside the checkpoint (atomically), holding:

- per query mode a **Platt map** ``p = sigmoid(a * score + b)`` (Platt, 1999: a logistic
  regression on the one score), fitted by maximum likelihood over *all* (query, gallery) pairs
  of the split: ``text`` (every caption -> every image), ``image`` (every image -> every other
  image) and ``blend`` (a caption with one example image of its person -> every other image, at
  the chosen ``text_weight``). Scores are computed as the service computes them: inner products
  of exported vectors, unit per block (``models.blocks``), so a calibrated number means the
  served score;
- the fit is **not class-balanced** by default: a balanced fit answers "same person, if half of
  the gallery were that person", which inflates every probability by the odds of the pair prior
  (about 1:200 on dev); unweighted, p is the observed frequency of same-person pairs at that
  score in a gallery like dev (200 persons, ~3 crops each). A gallery with more people than dev
  makes a same-person pair rarer, so the served p is then optimistic: the reliability table says
  how well it holds on dev, not elsewhere;
- the **same-person threshold** of the image mode: the lowest score at which the pairs scoring
  at least that much are still ``precision`` (default 0.90) same-person pairs; its precision and
  recall over all pairs;
- the **match levels**: strong (p >= 0.5), possible (p >= 0.2), weak below, and how the best hit
  of every dev query falls into them (how often it is right there);
- ``text_weight`` chosen on dev: a caption plus one example image of its person, every other
  image of that person the targets, over a grid; the best mAP wins (R1 on a tie).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.blocks import blend

log = logging.getLogger(__name__)

FORMAT = 1
LEVELS = {"strong": 0.5, "possible": 0.2}  # lower bound of p per level; below: weak
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
RELIABILITY_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)
MODES = ("text", "image", "blend")


@dataclass(frozen=True)
class Platt:
    """``p = sigmoid(a * score + b)``: a served score -> P(same person)."""

    a: float
    b: float

    def prob(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def score_at(self, p: float) -> float:
        """The score whose probability is ``p`` (the map is increasing when a > 0)."""
        return float((np.log(p / (1 - p)) - self.b) / self.a)


def fit_platt(scores: np.ndarray, labels: np.ndarray, *, balanced: bool = False,
              iterations: int = 100) -> Platt:
    """Maximum-likelihood logistic regression of ``labels`` (0/1) on ``scores`` by Newton's
    method. ``balanced``: positives and negatives weigh half each (see the module docstring for
    why the default is not). A tiny ridge (1e-9) keeps separable data finite."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    pos = y.sum()
    if pos == 0 or pos == len(y):
        raise ValueError("calibration needs both same-person and other-person pairs")
    w = (np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * (len(y) - pos))) if balanced
         else np.ones_like(y))
    design = np.stack([x, np.ones_like(x)], axis=1)  # (N, 2)
    rate = float((w * y).sum() / w.sum())
    theta = np.array([0.0, np.log(rate / (1 - rate))])  # (a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -500, 500)))  # (N,)
        grad = design.T @ (w * (y - p))  # (2,) of the log-likelihood
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)  # (2, 2)
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return Platt(float(theta[0]), float(theta[1]))


def threshold_at_precision(scores: np.ndarray, labels: np.ndarray,
                           precision: float) -> dict[str, float | int]:
    """The lowest score t such that the pairs scoring >= t are at least ``precision``
    same-person pairs -> {threshold, precision, recall, pairs_above}. Ties are kept together
    (a threshold takes every pair of its score)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)  # (N,) positives among the first k+1
    above = np.arange(1, len(s) + 1)
    ends = np.append(s[1:] != s[:-1], True)  # last pair of each tie group
    ok = np.flatnonzero(ends & (tp / above >= precision))
    if not len(ok):
        raise ValueError(f"no score threshold reaches precision {precision}")
    k = int(ok[-1])
    return {"threshold": float(s[k]), "precision": float(tp[k] / above[k]),
            "recall": float(tp[k] / y.sum()), "pairs_above": int(above[k])}


def reliability(prob: np.ndarray, labels: np.ndarray,
                edges: Sequence[float] = RELIABILITY_EDGES) -> list[dict[str, float | int]]:
    """Predicted vs observed per bin of predicted p ([lo, hi), the last bin closed)."""
    p, y = np.asarray(prob).ravel(), np.asarray(labels, dtype=bool).ravel()
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = (p >= lo) & ((p < hi) if i < len(edges) - 2 else (p <= hi))
        n = int(inside.sum())
        rows.append({"lo": lo, "hi": hi, "pairs": n,
                     "predicted": round(float(p[inside].mean()), 4) if n else None,
                     "observed": round(float(y[inside].mean()), 4) if n else None})
    return rows


def level(p: float, levels: dict[str, float] = LEVELS) -> str:
    """strong / possible / weak: the highest level whose lower bound p reaches."""
    for name, low in sorted(levels.items(), key=lambda kv: -kv[1]):
        if p >= low:
            return name
    return "weak"


def best_hit_levels(model: Platt, similarity: np.ndarray, same: np.ndarray,
                    levels: dict[str, float] = LEVELS) -> dict[str, dict[str, float | int]]:
    """Each query's best hit: how many fall in each level, and how often that hit is right."""
    best = similarity.argmax(axis=1)  # (Q,)
    rows = np.arange(len(best))
    names = [level(float(p), levels) for p in model.prob(similarity[rows, best])]
    right = same[rows, best]
    out = {}
    for name in [*sorted(levels, key=lambda n: -levels[n]), "weak"]:
        mine = np.asarray([n == name for n in names])
        out[name] = {"queries": int(mine.sum()),
                     "right": round(float(right[mine].mean()), 4) if mine.any() else None}
    return out


def _mode_fit(similarity: np.ndarray, same: np.ndarray, valid: np.ndarray,
              balanced: bool) -> tuple[Platt, dict[str, Any]]:
    """similarity, same, valid: (Q, G); pairs where ``valid`` is False are left out."""
    scores, labels = similarity[valid], same[valid]
    model = fit_platt(scores, labels, balanced=balanced)
    prob = model.prob(scores)
    eps = 1e-12
    log_loss = -float(np.mean(labels * np.log(prob + eps) + (1 - labels) * np.log(1 - prob + eps)))
    masked = np.where(valid, similarity, -np.inf)
    return model, {
        "a": model.a, "b": model.b, "balanced": balanced, "queries": int(similarity.shape[0]),
        "pairs": int(labels.size), "positives": int(labels.sum()),
        "log_loss": round(log_loss, 6),
        "score_at": {name: round(model.score_at(p), 4) for name, p in LEVELS.items()},
        "reliability": reliability(prob, labels),
        "best_hit_levels": best_hit_levels(model, masked, same & valid)}


@dataclass
class DevVectors:
    """A split encoded once: images (G, D), captions (Q, D) and their person ids."""

    images: np.ndarray
    image_pids: np.ndarray
    texts: np.ndarray
    text_pids: np.ndarray
    text_image: np.ndarray  # (Q,) index of the image each caption describes


def encode_split(encoder: Any, records: Sequence[Any], batch_size: int = 64) -> DevVectors:
    from models.evaluate import encode_images

    texts, pids, owner = [], [], []
    for i, r in enumerate(records):
        texts.extend(r.captions)
        pids.extend([r.pid] * len(r.captions))
        owner.extend([i] * len(r.captions))
    return DevVectors(encode_images(encoder, records, batch_size),
                      np.asarray([r.pid for r in records]), encoder.encode_text(texts),
                      np.asarray(pids), np.asarray(owner))


def blend_queries(spec: Any, dev: DevVectors) -> tuple[np.ndarray, np.ndarray]:
    """Every (caption, example image of the caption's person) of a person with >= 2 images
    -> caption index (M,), example image index (M,)."""
    captions, examples = [], []
    for q, pid in enumerate(dev.text_pids):
        for e in np.flatnonzero(dev.image_pids == pid):
            captions.append(q)
            examples.append(int(e))
    caps, exs = np.asarray(captions), np.asarray(examples)
    keep = np.asarray([(dev.image_pids == dev.image_pids[e]).sum() > 1 for e in exs])
    return caps[keep], exs[keep]


def blend_similarity(spec: Any, dev: DevVectors, weight: float, caps: np.ndarray,
                     exs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> similarity (M, G), same person (M, G), valid (M, G): the example left out."""
    queries = blend(spec, dev.texts[caps], dev.images[exs], weight)  # (M, D)
    similarity = queries @ dev.images.T  # (M, G)
    same = dev.image_pids[None, :] == dev.text_pids[caps][:, None]
    valid = np.ones_like(same)
    valid[np.arange(len(exs)), exs] = False
    return similarity, same, valid


def choose_text_weight(spec: Any, dev: DevVectors,
                       grid: Sequence[float] = TEXT_WEIGHTS) -> dict[str, Any]:
    """R1 and mAP of description + one example per grid weight; the best mAP (then R1) wins."""
    from models.evaluate import rank_metrics

    caps, exs = blend_queries(spec, dev)
    rows = []
    for weight in grid:
        similarity, _, valid = blend_similarity(spec, dev, weight, caps, exs)
        m = rank_metrics(similarity, dev.text_pids[caps], dev.image_pids, exclude=~valid)
        rows.append({"text_weight": weight, "rank1": round(m["rank1"], 2),
                     "mAP": round(m["mAP"], 2)})
    best = max(rows, key=lambda r: (r["mAP"], r["rank1"]))
    return {"chosen": best["text_weight"], "by": "mAP, then R1", "queries": int(len(caps)),
            "grid": rows}


@dataclass
class Calibration:
    """The sidecar ``<checkpoint stem>.calibration.json``: one type for the file format."""

    checkpoint_sha256: str
    modes: dict[str, dict[str, Any]]  # text / image / blend -> fit (a, b, reliability ...)
    same_person: dict[str, Any]  # threshold, precision, recall (image mode)
    text_weight: dict[str, Any]  # chosen, grid
    levels: dict[str, float] = field(default_factory=lambda: dict(LEVELS))
    checkpoint: str = ""
    dataset: str = ""
    split: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    command: str = ""
    created_at: str = ""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format") != FORMAT:
            raise ValueError(f"calibration format {data.get('format')!r}, expected {FORMAT}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def platt(self, mode: str) -> Platt:
        fit = self.modes[mode]
        return Platt(float(fit["a"]), float(fit["b"]))

    def level(self, p: float) -> str:
        return level(p, self.levels)

    def matches(self, checkpoint_sha256: str) -> bool:
        return self.checkpoint_sha256 == checkpoint_sha256

    def write(self, path: Path) -> None:
        """Atomically: a temporary file in the same folder, fsynced, renamed over ``path``."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def sidecar_path(checkpoint: Path) -> Path:
    """``models/checkpoints/default.pt`` -> ``models/checkpoints/default.calibration.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.calibration.json")


def calibrate(spec: Any, dev: DevVectors, *, precision: float = 0.9,
              balanced: bool = False) -> Calibration:
    """Every fit of the sidecar from encoded dev vectors (no file, no command: ``run``)."""
    modes = {}
    text_sim = dev.texts @ dev.images.T  # (Q, G)
    text_same = dev.text_pids[:, None] == dev.image_pids[None, :]
    _, modes["text"] = _mode_fit(text_sim, text_same, np.ones_like(text_same), balanced)
    image_sim = dev.images @ dev.images.T  # (G, G)
    image_same = dev.image_pids[:, None] == dev.image_pids[None, :]
    off_diagonal = ~np.eye(len(dev.images), dtype=bool)
    image_model, modes["image"] = _mode_fit(image_sim, image_same, off_diagonal, balanced)
    weights = choose_text_weight(spec, dev)
    caps, exs = blend_queries(spec, dev)
    sim, same, valid = blend_similarity(spec, dev, weights["chosen"], caps, exs)
    _, modes["blend"] = _mode_fit(sim, same, valid, balanced)
    modes["blend"]["text_weight"] = weights["chosen"]
    same_person = threshold_at_precision(image_sim[off_diagonal], image_same[off_diagonal],
                                         precision)
    same_person.update(mode="image", target_precision=precision,
                       probability=round(float(image_model.prob(same_person["threshold"])), 4))
    return Calibration(spec.checkpoint_sha256, modes, same_person, weights, counts={
        "images": len(dev.images), "captions": len(dev.texts),
        "persons": int(len(np.unique(dev.image_pids)))})


def run_calibrate(args: argparse.Namespace) -> int:
    """``tbps calibrate``: encode the split, fit, write the sidecar, print its summary."""
    import torch

    from models.data.datasets import read_dataset, select_split
    from models.factory import DEFAULT_CHECKPOINT, load_encoder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoint = Path(args.checkpoint or DEFAULT_CHECKPOINT)
    records = select_split(read_dataset(args.dataset, args.root), args.split)
    started = time.time()
    encoder = load_encoder(checkpoint, device=args.device, engine=args.engine)
    dev = encode_split(encoder, records, args.batch_size)
    if not 0 < args.precision <= 1:
        print(f"error: --precision {args.precision} is not in (0, 1]", file=sys.stderr)
        return 2
    try:
        result = calibrate(encoder.spec, dev, precision=args.precision, balanced=args.balanced)
    except ValueError as exc:  # a precision no threshold reaches, a split without pairs
        print(f"error: {exc} on {args.split}: choose a lower --precision", file=sys.stderr)
        return 1
    result.checkpoint, result.dataset, result.split = checkpoint.name, args.dataset, args.split
    result.command = "tbps " + shlex.join(sys.argv[1:])
    result.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.output) if args.output else sidecar_path(checkpoint)
    result.write(out)
    log.info("calibrated on %d images in %.1fs", len(dev.images), time.time() - started)
    sp = result.same_person
    print(f"wrote {out}")
    for mode, fit in result.modes.items():
        print(f"{mode:>6}: p = sigmoid({fit['a']:.4f} * score + {fit['b']:.4f}) over "
              f"{fit['pairs']} pairs ({fit['positives']} same-person)")
    print(f"same person (image mode): score >= {sp['threshold']:.4f}: precision "
          f"{sp['precision']:.3f}, recall {sp['recall']:.3f}")
    print(f"text_weight: {result.text_weight['chosen']} (by {result.text_weight['by']})")
    return 0
