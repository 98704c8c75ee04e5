"""The isotonic calibration map (models/isotonic.py): PAV against hand computations and against
the max-min formula of isotonic regression, the map's breakpoints, interpolation, clamping and
simplification."""

from __future__ import annotations

import numpy as np
import pytest

from models.isotonic import TOLERANCE, Isotonic, fit_isotonic, pav


def _fitted(values, ends) -> list[float]:
    """Block values spread back over the points."""
    out, start = [], 0
    for value, end in zip(values, ends, strict=True):
        out += [float(value)] * (int(end) - start)
        start = int(end)
    return out


def test_pav_by_hand():
    # y = 1, 3, 2, 4, 3, 5 (unit weights). Scanning left to right:
    #   1 | 3 -> 2 breaks 3: pool (3 + 2) / 2 = 2.5 -> [1] [2.5 2.5]
    #   4 -> 3 breaks 4: pool 3.5; 2.5 <= 3.5 holds -> [1] [2.5 2.5] [3.5 3.5]
    #   5 -> [1] [2.5 2.5] [3.5 3.5] [5]
    values, ends = pav(np.asarray([1, 3, 2, 4, 3, 5.0]), np.ones(6))
    assert _fitted(values, ends) == [1, 2.5, 2.5, 3.5, 3.5, 5]
    assert ends.tolist() == [1, 3, 5, 6]
    # y = 2, 3, 0: 3 -> 0 pools to 1.5, which breaks 2: all three pool to 5 / 3 (a cascade)
    values, ends = pav(np.asarray([2, 3, 0.0]), np.ones(3))
    assert values.tolist() == pytest.approx([5 / 3]) and ends.tolist() == [3]
    # weights: y = 3 (w 1), 1 (w 3) pool to (3 * 1 + 1 * 3) / 4 = 1.5
    values, ends = pav(np.asarray([3, 1.0]), np.asarray([1, 3.0]))
    assert values.tolist() == [1.5]
    # equal neighbours are one block: 1, 1, 2 -> [1 1] [2]
    values, ends = pav(np.asarray([1, 1, 2.0]), np.ones(3))
    assert values.tolist() == [1, 2] and ends.tolist() == [2, 3]


def _max_min(y, w) -> list[float]:
    """Isotonic regression by its closed form (Robertson, Wright & Dykstra 1988, Thm 1.4.4):
    fit_i = max over j <= i of min over k >= i of the weighted mean of y[j..k]."""
    n = len(y)
    out = []
    for i in range(n):
        best = -np.inf
        for j in range(i + 1):
            low = np.inf
            for k in range(i, n):
                mean = sum(w[t] * y[t] for t in range(j, k + 1)) / sum(w[j:k + 1])
                low = min(low, mean)
            best = max(best, low)
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pav_equals_the_max_min_formula(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(size=12) + 0.2 * np.arange(12), 2)
    w = rng.integers(1, 4, 12).astype(float)
    values, ends = pav(y, w)
    assert _fitted(values, ends) == pytest.approx(_max_min(y.tolist(), w.tolist()), abs=1e-12)
    assert np.all(np.diff(values) > 0)  # maximal blocks: strictly rising between them


def test_fit_isotonic_breakpoints_by_hand():
    # scores 1 2 3 4 5 7, labels 0 0 1 0 1 1. Pseudo-pairs: a same-person pair at 1, an
    # other-person pair at 7 -> rates 1/2 (w 2), 0, 1, 0, 1, 1/2 (w 2).
    # PAV: 1/2 and 0 pool to 1/3 (w 3); 1 then 0 pool to 1/2 (w 2); 1 then 1/2 (w 2) pool to
    # 2/3 (w 3). Blocks {1, 2} p 1/3, mean score (1*2 + 2) / 3 = 4/3; {3, 4} p 1/2 at 7/2;
    # {5, 7} p 2/3 at (5 + 7*2) / 3 = 19/3.
    scores = np.asarray([1, 2, 3, 4, 5, 7.0])
    labels = np.asarray([0, 0, 1, 0, 1, 1])
    fit = fit_isotonic(scores, labels)
    assert fit.score == pytest.approx((4 / 3, 7 / 2, 19 / 3))
    assert fit.p == pytest.approx((1 / 3, 1 / 2, 2 / 3))
    # the middle breakpoint is 1/2 - (1/3 + (7/2 - 4/3) * (1/3) / 5) = 1/2 - 43/90 = 0.0222 off
    # the line through the outer two: kept at a tolerance of 0.01, dropped at 0.05
    assert len(fit_isotonic(scores, labels, tolerance=0.01).score) == 3
    assert fit_isotonic(scores, labels, tolerance=0.05).score == pytest.approx((4 / 3, 19 / 3))


def test_fit_isotonic_pools_tied_scores_and_keeps_p_inside_0_1():
    # 3 of 20 pairs at 0.2, 15 of 20 at 0.8 (as Platt's two-value test): with the pseudo-pairs
    # 4 of 21 and 15 of 21; the top is not 1.0 nor the bottom 0.0 even when the data say so
    fit = fit_isotonic(np.asarray([0.2] * 20 + [0.8] * 20), np.asarray(
        [1] * 3 + [0] * 17 + [1] * 15 + [0] * 5))
    assert fit.score == pytest.approx((0.2, 0.8)) and fit.p == pytest.approx((4 / 21, 15 / 21))
    sure = fit_isotonic(np.asarray([0.1, 0.2, 0.3, 0.4]), np.asarray([0, 0, 1, 1]))
    assert 0 < sure.p[0] and sure.p[-1] < 1


def test_fit_isotonic_is_monotone_and_its_simplification_stays_within_tolerance():
    rng = np.random.default_rng(11)
    labels = rng.random(20000) < 0.02
    scores = rng.normal(0.4, 0.2, 20000) + 0.5 * labels
    full = fit_isotonic(scores, labels, tolerance=0.0)
    small = fit_isotonic(scores, labels)
    assert np.all(np.diff(small.p) >= 0) and np.all(np.diff(small.score) > 0)
    assert len(small.score) < len(full.score)
    grid = np.linspace(scores.min() - 0.1, scores.max() + 0.1, 5001)
    assert np.all(np.diff(small.prob(grid)) >= 0)
    assert np.abs(small.prob(grid) - full.prob(grid)).max() <= TOLERANCE + 1e-12
    again = fit_isotonic(scores, labels)  # deterministic
    assert again == small


def test_fit_isotonic_refuses_a_single_class():
    with pytest.raises(ValueError, match="both"):
        fit_isotonic(np.asarray([0.1, 0.2]), np.asarray([1, 1]))


def test_interpolation_clamping_and_score_at():
    m = Isotonic((0.0, 1.0, 2.0), (0.1, 0.3, 0.9))
    assert m.prob(np.asarray([-5.0, 0.0, 0.5, 1.5, 2.0, 9.0])).tolist() == pytest.approx(
        [0.1, 0.1, 0.2, 0.6, 0.9, 0.9])
    assert m.score_at(0.2) == pytest.approx(0.5) and m.score_at(0.6) == pytest.approx(1.5)
    assert m.score_at(0.3) == pytest.approx(1.0)
    assert m.score_at(0.05) == -np.inf and m.score_at(0.95) == np.inf
    flat = Isotonic((0.0, 1.0, 2.0), (0.1, 0.5, 0.5))
    assert flat.score_at(0.5) == pytest.approx(1.0)  # the lowest score of the flat top


@pytest.mark.parametrize("score, p", [
    ((0.0, 1.0), (0.5,)),  # lengths differ
    ((), ()),  # empty
    ((0.0, 0.0), (0.1, 0.2)),  # scores not rising
    ((0.0, 1.0), (0.3, 0.2)),  # p falling
    ((0.0, 1.0), (0.3, 1.2)),  # p above 1
    ((0.0, float("nan")), (0.1, 0.2)),
    ((0.0, 1.0), (0.1, float("nan"))),
])
def test_bad_breakpoints_are_refused(score, p):
    with pytest.raises(ValueError):
        Isotonic(score, p)


def test_round_trip_through_a_dict():
    m = Isotonic((0.25, 0.5), (0.01, 0.7))
    assert Isotonic.from_dict(m.to_dict()) == m
