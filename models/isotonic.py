"""An isotonic calibration map: P(same person) as a monotone non-decreasing function of the
score, fitted by pool-adjacent-violators (PAV; Ayer et al., 1955; Zadrozny & Elkan, 2002 for
calibration), stored as a few breakpoints ``(score, p)`` (issue 26).

Why next to Platt's logistic (``models.calibration``): one logistic in the raw score has one
shape; on dev its image map ran low above p 0.5 (predicted 0.57, observed 0.70). An isotonic
map takes any increasing shape the pairs show. ``models.calibration`` fits both and serves the
one that does better on held-out persons.

The map, from PAV's blocks (maximal runs of sorted scores pooled to one rate):

- one breakpoint per block at its mean score, with the block's rate as p; linear between
  breakpoints, clamped outside (the lowest block's p below, the highest's above). A map through
  the block means has no jump between two nearly equal scores, unlike PAV's step function;
- one pseudo-pair at each end (an other-person pair at the highest score, a same-person pair at
  the lowest) before pooling: without them the top block of a few same-person pairs says
  p = 1.0 and the bottom one p = 0.0, which a held-out pair refutes at once (infinite log loss);
  with them p stays inside (0, 1) and the bulk is unchanged;
- breakpoints simplified (Douglas-Peucker on the curve) while p moves by at most
  ``TOLERANCE`` anywhere, which keeps the sidecar small. Every step is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-4  # largest change of p the breakpoint simplification may make


@dataclass(frozen=True)
class Isotonic:
    """Breakpoints ``score`` (strictly increasing) -> ``p`` (non-decreasing, in [0, 1])."""

    score: tuple[float, ...]
    p: tuple[float, ...]

    def __post_init__(self) -> None:
        x, y = np.asarray(self.score, dtype=np.float64), np.asarray(self.p, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or not len(x):
            raise ValueError("an isotonic map needs as many p as scores, at least one")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise ValueError("isotonic breakpoints must rise in score and not fall in p")
        if not (np.isfinite(x).all() and np.isfinite(y).all()) or y[0] < 0 or y[-1] > 1:
            raise ValueError("isotonic breakpoints need finite scores and p in [0, 1]")

    def prob(self, scores: np.ndarray | float) -> np.ndarray:
        """Linear between breakpoints, clamped outside them."""
        return np.interp(np.asarray(scores, dtype=np.float64), self.score, self.p)

    def score_at(self, p: float) -> float:
        """The lowest score whose probability is at least ``p``: -inf when every score's is
        (the clamped bottom reaches it), +inf when none is."""
        y = np.asarray(self.p)
        above = np.flatnonzero(y >= p)
        if not len(above):
            return float("inf")
        i = int(above[0])
        if i == 0:
            return float("-inf")
        x0, x1, y0, y1 = self.score[i - 1], self.score[i], self.p[i - 1], self.p[i]
        return float(x0 + (p - y0) * (x1 - x0) / (y1 - y0))  # y0 < p <= y1

    def to_dict(self) -> dict[str, list[float]]:
        return {"score": list(self.score), "p": list(self.p)}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Isotonic:
        return cls(tuple(float(s) for s in data["score"]), tuple(float(p) for p in data["p"]))


def pav(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing sequence nearest to ``y`` in weighted least
    squares (weights ``w`` > 0), as blocks -> (block value (B,), index one past each block's
    end (B,)). Equal neighbouring values are pooled too, so blocks are maximal."""
    sums: list[float] = []  # per block: sum of w * y
    weights: list[float] = []  # per block: sum of w
    ends: list[int] = []
    for i, (yi, wi) in enumerate(zip(np.asarray(y, dtype=np.float64).tolist(),
                                     np.asarray(w, dtype=np.float64).tolist(), strict=True)):
        s, v = wi * yi, wi
        while sums and sums[-1] * v >= s * weights[-1]:  # previous mean >= this mean: pool
            s, v = s + sums.pop(), v + weights.pop()
            ends.pop()
        sums.append(s)
        weights.append(v)
        ends.append(i + 1)
    return np.asarray(sums) / np.asarray(weights), np.asarray(ends, dtype=np.int64)


def fit_isotonic(scores: np.ndarray, labels: np.ndarray,
                 tolerance: float = TOLERANCE) -> Isotonic:
    """The isotonic map of 0/1 ``labels`` on ``scores`` (see the module docstring)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    yes = np.asarray(labels, dtype=np.float64).ravel()
    if not len(x) or yes.sum() in (0, len(yes)):
        raise ValueError("calibration needs both same-person and other-person pairs")
    values, inverse = np.unique(x, return_inverse=True)  # tied scores share one p
    count = np.bincount(inverse, minlength=len(values)).astype(np.float64)  # (U,)
    positive = np.bincount(inverse, weights=yes, minlength=len(values))  # (U,)
    count[0], positive[0] = count[0] + 1, positive[0] + 1  # a same-person pseudo-pair
    count[-1] += 1  # an other-person pseudo-pair (the same unique score when U == 1)
    rate, ends = pav(positive / count, count)
    starts = np.concatenate([[0], ends[:-1]])
    weighted = np.add.reduceat(values * count, starts)  # (B,) sum of score * count per block
    centre = weighted / np.add.reduceat(count, starts)  # (B,) each block's mean score
    keep = simplify(centre, rate, tolerance)
    return Isotonic(tuple(centre[keep].tolist()), tuple(rate[keep].tolist()))


def simplify(x: np.ndarray, y: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker: indices of the breakpoints to keep so that the line through them is
    within ``tolerance`` of ``y`` at every dropped one (so everywhere: both are linear between
    the original breakpoints). Keeps both ends; the kept p stay non-decreasing."""
    keep = np.zeros(len(x), dtype=bool)
    keep[[0, -1]] = True
    todo = [(0, len(x) - 1)]
    while todo:
        lo, hi = todo.pop()
        if hi - lo < 2:
            continue
        inner = np.arange(lo + 1, hi)
        chord = y[lo] + (x[inner] - x[lo]) * (y[hi] - y[lo]) / (x[hi] - x[lo])
        gap = np.abs(y[inner] - chord)
        k = int(inner[np.argmax(gap)])
        if gap.max() > tolerance:
            keep[k] = True
            todo += [(lo, k), (k, hi)]
    return np.flatnonzero(keep)
