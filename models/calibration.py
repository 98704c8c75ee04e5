"""Match confidence: served scores calibrated on dev into P(same person) (issue 26).

``tbps calibrate --checkpoint FILE --root DIR --split dev [--precision 0.9] [--map auto]`` writes
``<checkpoint stem>.calibration.json`` beside the checkpoint (atomically), holding:

- per query mode a **Platt map** ``p = sigmoid(a * score + b)`` (Platt, 1999: a logistic
  regression on the one score) and an **isotonic map** (``models.isotonic``: monotone, any
  shape), both fitted over *all* (query, gallery) pairs of the split: ``text`` (every caption
  -> every image), ``image`` (every image -> every other image) and ``blend`` (a caption with
  one example image of its person -> every other image, at the chosen ``text_weight``). Scores
  are computed as the service computes them: inner products of exported vectors, unit per
  block (``models.blocks``), so a calibrated number means the served score;
- which map a mode serves (``map``), chosen on **held-out persons**: the queries are split in
  two halves by their person (each against the whole gallery, so the pair prior stays dev's;
  no same-person pair is in both halves, an other-person pair's mirror may be, in the image
  mode); each half's pairs get p from the maps fitted on the other half, and the map with the
  lower **Brier score** over those cross-fitted p wins (Platt on a tie; ``--map platt`` or
  ``isotonic`` serves one regardless; ``--balanced`` fits Platt only). Brier, not log loss: it
  weighs an error of 0.1 in p alike at p 0.6 and at p 0.01, as a reader of the levels does,
  where log loss is dominated by relative errors among the many pairs near p = 0. Both
  figures of both maps are recorded (``held_out``), and the **reliability table** of each mode
  is of the cross-fitted p of the served map: predicted against observed on pairs its fit did
  not see (an isotonic map is calibrated on its own pairs by construction);
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
import functools
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
from models.isotonic import Isotonic, fit_isotonic

log = logging.getLogger(__name__)

FORMAT = 1
LEVELS = {"strong": 0.5, "possible": 0.2}  # lower bound of p per level; below: weak
TEXT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
RELIABILITY_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)
MODES = ("text", "image", "blend")
MAPS = ("platt", "isotonic")
SPLIT_SEED = 0  # which persons fall in which half of the held-out comparison


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


ScoreMap = Platt | Isotonic  # score -> P(same person): ``prob(scores)``, ``score_at(p)``


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


def best_hit_levels(model: ScoreMap, similarity: np.ndarray, same: np.ndarray,
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


def fit_map(kind: str, scores: np.ndarray, labels: np.ndarray, *,
            balanced: bool = False) -> ScoreMap:
    """A ``platt`` or ``isotonic`` map of 0/1 ``labels`` on ``scores``."""
    if kind == "platt":
        return fit_platt(scores, labels, balanced=balanced)
    if kind == "isotonic" and not balanced:
        return fit_isotonic(scores, labels)
    raise ValueError(f"no {'balanced ' if balanced else ''}{kind} map (maps: {', '.join(MAPS)}; "
                     "--balanced fits Platt only)")


def log_loss(prob: np.ndarray, labels: np.ndarray) -> float:
    eps = 1e-12
    return -float(np.mean(labels * np.log(prob + eps) + (1 - labels) * np.log(1 - prob + eps)))


def brier(prob: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((prob - labels) ** 2))


def person_halves(persons: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """(N,) person id of each pair's query -> (N,) bool, True in the first half of persons
    (a seeded shuffle of the distinct ids, every other one)."""
    ids = np.random.default_rng(seed).permutation(np.unique(persons))
    return np.isin(persons, ids[::2])


def cross_fitted(kind: str, scores: np.ndarray, labels: np.ndarray, half: np.ndarray, *,
                 balanced: bool = False) -> np.ndarray:
    """(N,) p of every pair from the map fitted on the other half's pairs."""
    prob = np.empty(len(scores), dtype=np.float64)
    for test in (half, ~half):
        if labels[~test].all() or not labels[~test].any():
            raise ValueError("a half of the persons has no same-person or no other-person "
                             "pairs: too few persons to compare maps on held-out ones")
        model = fit_map(kind, scores[~test], labels[~test], balanced=balanced)
        prob[test] = model.prob(scores[test])
    return prob


def held_out(scores: np.ndarray, labels: np.ndarray, persons: np.ndarray, kinds: Sequence[str],
             *, balanced: bool = False) -> dict[str, Any]:
    """Log loss, Brier and reliability of each map kind on cross-fitted p (two halves of the
    query persons), and the kind with the lower Brier score (the first listed on a tie)."""
    half = person_halves(persons)
    out: dict[str, Any] = {"split": f"2 halves of the query persons (seed {SPLIT_SEED})",
                           "by": "brier"}
    for kind in kinds:
        prob = cross_fitted(kind, scores, labels, half, balanced=balanced)
        out[kind] = {"log_loss": round(log_loss(prob, labels), 6),
                     "brier": round(brier(prob, labels), 8),
                     "reliability": reliability(prob, labels)}
    out["best"] = min(kinds, key=lambda k: out[k]["brier"])
    return out


def _mode_fit(similarity: np.ndarray, same: np.ndarray, valid: np.ndarray,
              query_pids: np.ndarray, *, balanced: bool,
              choice: str = "auto") -> tuple[ScoreMap, dict[str, Any]]:
    """similarity, same, valid: (Q, G); query_pids: (Q,); pairs where ``valid`` is False are
    left out. ``choice``: ``auto`` (held-out Brier), ``platt`` or ``isotonic``."""
    scores, labels = similarity[valid], same[valid]
    persons = np.broadcast_to(query_pids[:, None], similarity.shape)[valid]  # (N,)
    kinds = ("platt",) if balanced else MAPS
    comparison = held_out(scores, labels, persons, kinds, balanced=balanced)
    kind = comparison["best"] if choice == "auto" else choice
    maps = {k: fit_map(k, scores, labels, balanced=balanced) for k in kinds}
    model, platt = maps[kind], maps["platt"]
    assert isinstance(platt, Platt)
    masked = np.where(valid, similarity, -np.inf)
    at = {name: model.score_at(p) for name, p in LEVELS.items()}
    return model, {
        "map": kind, "a": platt.a, "b": platt.b,
        **({"isotonic": maps["isotonic"].to_dict()} if "isotonic" in maps else {}),
        "balanced": balanced, "queries": int(similarity.shape[0]),
        "pairs": int(labels.size), "positives": int(labels.sum()),
        "log_loss": round(log_loss(model.prob(scores), labels), 6),
        "score_at": {n: round(s, 4) if np.isfinite(s) else None for n, s in at.items()},
        "reliability": comparison[kind]["reliability"], "held_out": comparison,
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
    modes: dict[str, dict[str, Any]]  # text / image / blend -> map, a, b, isotonic, ...
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
        calibration = cls(**known)
        for mode in calibration.modes:  # a map that cannot serve fails here, not per query
            calibration.map(mode)
        return calibration

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def platt(self, mode: str) -> Platt:
        fit = self.modes[mode]
        return Platt(float(fit["a"]), float(fit["b"]))

    def map(self, mode: str) -> ScoreMap:
        """The map ``mode`` serves: ``map`` names it; a sidecar without ``map`` (written before
        the isotonic option) serves Platt's."""
        fit = self.modes[mode]
        kind = fit.get("map", "platt")
        if kind == "platt":
            return self.platt(mode)
        if kind == "isotonic":
            return Isotonic.from_dict(fit["isotonic"])
        raise ValueError(f"calibration map {kind!r} of mode {mode!r} is not one of {MAPS}")

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


def calibrate(spec: Any, dev: DevVectors, *, precision: float = 0.9, balanced: bool = False,
              choice: str = "auto") -> Calibration:
    """Every fit of the sidecar from encoded dev vectors (no file, no command: ``run``).
    ``choice``: the map every mode serves, ``auto`` (held-out Brier), ``platt`` or
    ``isotonic``."""
    if choice not in ("auto", *MAPS) or (balanced and choice == "isotonic"):
        raise ValueError(f"map {choice!r}: auto, platt or isotonic (--balanced: Platt only)")
    modes = {}
    fit = functools.partial(_mode_fit, balanced=balanced, choice=choice)
    text_sim = dev.texts @ dev.images.T  # (Q, G)
    text_same = dev.text_pids[:, None] == dev.image_pids[None, :]
    _, modes["text"] = fit(text_sim, text_same, np.ones_like(text_same), dev.text_pids)
    image_sim = dev.images @ dev.images.T  # (G, G)
    image_same = dev.image_pids[:, None] == dev.image_pids[None, :]
    off_diagonal = ~np.eye(len(dev.images), dtype=bool)
    image_model, modes["image"] = fit(image_sim, image_same, off_diagonal, dev.image_pids)
    weights = choose_text_weight(spec, dev)
    caps, exs = blend_queries(spec, dev)
    sim, same, valid = blend_similarity(spec, dev, weights["chosen"], caps, exs)
    _, modes["blend"] = fit(sim, same, valid, dev.text_pids[caps])
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

    if not 0 < args.precision <= 1:  # both refused before the minutes of encoding
        print(f"error: --precision {args.precision} is not in (0, 1]", file=sys.stderr)
        return 2
    if args.balanced and args.map == "isotonic":
        print("error: --balanced fits Platt only: --map auto or platt", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoint = Path(args.checkpoint or DEFAULT_CHECKPOINT)
    records = select_split(read_dataset(args.dataset, args.root), args.split)
    started = time.time()
    encoder = load_encoder(checkpoint, device=args.device, engine=args.engine)
    dev = encode_split(encoder, records, args.batch_size)
    try:
        result = calibrate(encoder.spec, dev, precision=args.precision, balanced=args.balanced,
                           choice=args.map)
    except ValueError as exc:  # a precision no threshold reaches, a split without pairs
        print(f"error: {exc} on {args.split} (a lower --precision or a split with more "
              "persons may do)", file=sys.stderr)
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
        held = fit["held_out"]
        figures = ", ".join(f"{k} {held[k]['brier']:.7f}" for k in MAPS if k in held)
        print(f"{mode:>6}: serves {fit['map']} over {fit['pairs']} pairs ({fit['positives']} "
              f"same-person); held-out Brier {figures}; Platt p = sigmoid({fit['a']:.4f} * "
              f"score + {fit['b']:.4f})")
    print(f"same person (image mode): score >= {sp['threshold']:.4f}: precision "
          f"{sp['precision']:.3f}, recall {sp['recall']:.3f}")
    print(f"text_weight: {result.text_weight['chosen']} (by {result.text_weight['by']})")
    return 0
