"""The match calibration (models/calibration.py): the Platt fit, the same-person threshold, the
reliability table, the held-out choice between Platt and isotonic maps and the sidecar, each
against a hand computation on small synthetic sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.calibration import (
    Calibration,
    DevVectors,
    Platt,
    calibrate,
    fit_platt,
    held_out,
    level,
    person_halves,
    reliability,
    sidecar_path,
    threshold_at_precision,
)
from models.encoder import EncoderSpec, Part
from models.isotonic import Isotonic


def _log_likelihood(a: float, b: float, scores, labels, weights=None) -> float:
    total = 0.0
    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        p = 1.0 / (1.0 + math.exp(-(a * s + b)))
        w = 1.0 if weights is None else weights[i]
        total += w * (y * math.log(p) + (1 - y) * math.log(1 - p))
    return total


def _gradient(a: float, b: float, scores, labels, weights=None) -> tuple[float, float]:
    ga = gb = 0.0
    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        p = 1.0 / (1.0 + math.exp(-(a * s + b)))
        w = 1.0 if weights is None else weights[i]
        ga += w * (y - p) * s
        gb += w * (y - p)
    return ga, gb


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_platt_on_two_score_values_reproduces_their_observed_rates():
    # 3 of 20 pairs at 0.2 are the same person, 15 of 20 at 0.8: the maximum-likelihood
    # logistic curve passes through both rates exactly
    scores = [0.2] * 20 + [0.8] * 20
    labels = [1] * 3 + [0] * 17 + [1] * 15 + [0] * 5
    fit = fit_platt(np.asarray(scores), np.asarray(labels))
    a = (_logit(0.75) - _logit(0.15)) / (0.8 - 0.2)
    b = _logit(0.15) - a * 0.2
    assert fit.a == pytest.approx(a, rel=1e-6) and fit.b == pytest.approx(b, rel=1e-6)
    assert fit.score_at(0.5) == pytest.approx(-b / a, rel=1e-6)


@pytest.mark.parametrize("balanced", [False, True])
def test_platt_is_the_maximum_of_the_likelihood(balanced):
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.1).astype(int)  # a rare positive, like same-person pairs
    scores = rng.normal(0.3, 0.2, 300) + 0.4 * labels
    fit = fit_platt(scores, labels, balanced=balanced)
    weights = None
    if balanced:  # each class weighs half of the total
        pos = sum(labels)
        weights = [len(labels) / (2 * pos) if y else len(labels) / (2 * (len(labels) - pos))
                   for y in labels]
    ga, gb = _gradient(fit.a, fit.b, scores.tolist(), labels.tolist(), weights)
    assert abs(ga) < 1e-6 and abs(gb) < 1e-6
    best = _log_likelihood(fit.a, fit.b, scores.tolist(), labels.tolist(), weights)
    for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert best > _log_likelihood(fit.a + da, fit.b + db, scores.tolist(),
                                      labels.tolist(), weights)
    if balanced:  # weighting raises every probability: the positives count as often as not
        assert fit.b > fit_platt(scores, labels).b


def test_platt_refuses_a_single_class():
    with pytest.raises(ValueError, match="both"):
        fit_platt(np.asarray([0.1, 0.2]), np.asarray([0, 0]))


def _threshold_by_hand(scores, labels, target):
    """Every distinct score as a candidate, the lowest that keeps the precision."""
    chosen = None
    for t in sorted(set(scores), reverse=True):
        above = [y for s, y in zip(scores, labels, strict=True) if s >= t]
        if sum(above) / len(above) >= target:
            chosen = (t, sum(above) / len(above), sum(above) / sum(labels), len(above))
    return chosen


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_at_precision_matches_a_scan_of_every_score(target):
    rng = np.random.default_rng(7)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = np.round(rng.normal(0.0, 1.0, 200) + 1.5 * labels, 1)  # ties on purpose
    got = threshold_at_precision(scores, labels, target)
    t, precision, recall, n = _threshold_by_hand(scores.tolist(), labels.tolist(), target)
    assert got["threshold"] == pytest.approx(t)
    assert got["precision"] == pytest.approx(precision) and got["precision"] >= target
    assert got["recall"] == pytest.approx(recall) and got["pairs_above"] == n


def test_threshold_out_of_reach_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="precision 0.99"):
        threshold_at_precision(np.asarray([1.0, 1.0]), np.asarray([1, 0]), 0.99)


def test_reliability_bins_by_hand():
    prob = np.asarray([0.01, 0.03, 0.04, 0.3, 0.33, 0.95, 1.0])
    labels = np.asarray([0, 0, 1, 1, 0, 1, 1])
    rows = {(r["lo"], r["hi"]): r for r in reliability(prob, labels, (0.0, 0.05, 0.5, 1.0))}
    assert rows[(0.0, 0.05)]["pairs"] == 3
    assert rows[(0.0, 0.05)]["predicted"] == pytest.approx((0.01 + 0.03 + 0.04) / 3, abs=1e-4)
    assert rows[(0.0, 0.05)]["observed"] == pytest.approx(1 / 3, abs=1e-4)
    assert rows[(0.05, 0.5)]["observed"] == pytest.approx(0.5)
    assert rows[(0.5, 1.0)]["pairs"] == 2  # the last bin holds p = 1.0
    assert rows[(0.5, 1.0)]["observed"] == 1.0


def test_levels():
    assert [level(p) for p in (0.9, 0.5, 0.49, 0.2, 0.19, 0.0)] == [
        "strong", "strong", "possible", "possible", "weak", "weak"]
    assert Platt(2.0, -1.0).prob(0.5) == pytest.approx(0.5)


SPEC = EncoderSpec("synthetic", 4, "sha-of-synthetic", (8, 4), (0.5,) * 3, (0.5,) * 3,
                   (Part("global", 0, 2, "global"), Part("stripe", 2, 4, "local")))


def _synthetic_dev(seed: int = 0) -> DevVectors:
    """6 persons x 3 images; captions near their person's centre, images nearer."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 4))

    def unit(v):
        v = v.copy()
        for lo, hi in ((0, 2), (2, 4)):
            v[:, lo:hi] /= np.linalg.norm(v[:, lo:hi], axis=1, keepdims=True)
        return v.astype(np.float32)

    image_pids = np.repeat(np.arange(6), 3)
    images = unit(centres[image_pids] + 0.3 * rng.normal(size=(18, 4)))
    texts = unit(centres[image_pids] + 0.8 * rng.normal(size=(18, 4)))  # one caption an image
    return DevVectors(images, image_pids, texts, image_pids.copy(), np.arange(18))


def test_calibrate_writes_a_sidecar_that_reads_back(tmp_path):
    dev = _synthetic_dev()
    result = calibrate(SPEC, dev, precision=0.6)
    assert set(result.modes) == {"text", "image", "blend"}
    assert result.modes["image"]["pairs"] == 18 * 17
    assert result.modes["image"]["positives"] == 18 * 2
    assert result.modes["text"]["pairs"] == 18 * 18
    off = ~np.eye(18, dtype=bool)
    sim = dev.images @ dev.images.T
    same = dev.image_pids[:, None] == dev.image_pids[None, :]
    t, precision, recall, _ = _threshold_by_hand(sim[off].tolist(), same[off].tolist(), 0.6)
    assert result.same_person["threshold"] == pytest.approx(t)
    assert result.same_person["recall"] == pytest.approx(recall)
    grid = result.text_weight["grid"]
    assert result.text_weight["chosen"] == max(grid, key=lambda r: (r["mAP"], r["rank1"]))[
        "text_weight"]
    path = sidecar_path(tmp_path / "model.pt")
    assert path.name == "model.calibration.json"
    result.write(path)
    back = Calibration.load(path)
    assert back.matches("sha-of-synthetic") and not back.matches("another")
    assert back.platt("text") == result.platt("text")
    for mode, fit in result.modes.items():
        assert back.map(mode) == result.map(mode)
        held = fit["held_out"]
        assert fit["map"] == held["best"] == min(("platt", "isotonic"),
                                                 key=lambda k: held[k]["brier"])
        assert fit["reliability"] == held[fit["map"]]["reliability"]
        assert all(held[k]["log_loss"] > 0 and 0 < held[k]["brier"] < 1
                   for k in ("platt", "isotonic"))
        assert Isotonic.from_dict(fit["isotonic"]).p[-1] <= 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = json.loads(path.read_text())
    data["format"] = 99
    with pytest.raises(ValueError, match="format"):
        Calibration.from_dict(data)


def test_person_halves_keep_each_person_whole_and_are_deterministic():
    persons = np.repeat(np.asarray([5, 9, 2, 7, 3]), [4, 1, 3, 2, 6])
    half = person_halves(persons)
    for pid in np.unique(persons):
        assert len(set(half[persons == pid].tolist())) == 1
    first = {int(p) for p in np.unique(persons[half])}
    assert len(first) in (2, 3) and np.array_equal(person_halves(persons), half)


def _brier_by_hand(scores, labels, half, fit):
    """Each half's pairs scored by the map fitted on the other half's pairs, squared error."""
    total = 0.0
    for test in (half, ~half):
        model = fit(scores[~test], labels[~test])
        for s, y in zip(scores[test].tolist(), labels[test].tolist(), strict=True):
            total += (float(model.prob(s)) - y) ** 2
    return total / len(scores)


def _pairs(seed: int, step: bool):
    """40 query persons x 300 pairs; P(same) a logistic in the score, or a step at 0.6."""
    rng = np.random.default_rng(seed)
    persons = np.repeat(np.arange(40), 300)
    scores = rng.random(len(persons))
    truth = (np.where(scores < 0.6, 0.02, 0.8) if step
             else 1 / (1 + np.exp(-(8 * scores - 6))))
    return scores, rng.random(len(persons)) < truth, persons


def test_held_out_scores_each_half_with_the_other_halfs_fit():
    from models.isotonic import fit_isotonic

    scores, labels, persons = _pairs(1, step=False)
    got = held_out(scores, labels, persons, ("platt", "isotonic"))
    half = person_halves(persons)
    assert got["platt"]["brier"] == pytest.approx(
        _brier_by_hand(scores, labels, half, fit_platt), abs=1e-8)
    assert got["isotonic"]["brier"] == pytest.approx(
        _brier_by_hand(scores, labels, half, fit_isotonic), abs=1e-8)
    assert got["best"] == min(("platt", "isotonic"), key=lambda k: got[k]["brier"])
    assert sum(r["pairs"] for r in got["platt"]["reliability"]) == len(scores)


def test_a_step_shaped_truth_chooses_isotonic():
    scores, labels, persons = _pairs(2, step=True)
    got = held_out(scores, labels, persons, ("platt", "isotonic"))
    assert got["best"] == "isotonic"
    assert got["isotonic"]["brier"] < got["platt"]["brier"]
    assert got["isotonic"]["log_loss"] < got["platt"]["log_loss"]
    # where it matters: the reliability of the pairs predicted >= 0.5 (truth 0.8 there)
    top = [r for r in got["isotonic"]["reliability"] if r["lo"] >= 0.5 and r["pairs"]]
    assert all(abs(r["predicted"] - r["observed"]) < 0.05 for r in top)


@pytest.mark.parametrize("choice", ["platt", "isotonic"])
def test_a_chosen_map_is_served_in_every_mode(choice):
    result = calibrate(SPEC, _synthetic_dev(), precision=0.6, choice=choice)
    for mode, fit in result.modes.items():
        assert fit["map"] == choice
        assert isinstance(result.map(mode), Isotonic if choice == "isotonic" else Platt)
        assert set(fit["held_out"]) >= {"platt", "isotonic", "best"}


def test_balanced_fits_platt_only_and_unknown_maps_are_refused():
    result = calibrate(SPEC, _synthetic_dev(), precision=0.6, balanced=True)
    assert all(f["map"] == "platt" and "isotonic" not in f for f in result.modes.values())
    for kwargs in ({"balanced": True, "choice": "isotonic"}, {"choice": "spline"}):
        with pytest.raises(ValueError, match="map"):
            calibrate(SPEC, _synthetic_dev(), precision=0.6, **kwargs)


def _old_sidecar() -> dict:
    """A sidecar as written before the isotonic option: per mode a, b and no ``map``."""
    modes = {m: {"a": 6.5, "b": -9.0, "balanced": False, "pairs": 10, "positives": 2,
                 "log_loss": 0.1, "reliability": []} for m in ("text", "image", "blend")}
    return {"checkpoint_sha256": "sha", "modes": modes, "same_person": {"threshold": 1.4},
            "text_weight": {"chosen": 0.25}, "levels": {"strong": 0.5, "possible": 0.2},
            "format": 1}


def test_an_old_platt_only_sidecar_serves_platt():
    cal = Calibration.from_dict(_old_sidecar())
    assert cal.map("image") == Platt(6.5, -9.0)
    assert float(cal.map("text").prob(1.0)) == pytest.approx(1 / (1 + math.exp(2.5)))


@pytest.mark.parametrize("change, message", [
    ({"map": "spline"}, "spline"),
    ({"map": "isotonic"}, "isotonic"),  # named but missing
    ({"map": "isotonic", "isotonic": {"score": [0.2, 0.1], "p": [0.1, 0.2]}}, "rise"),
])
def test_a_sidecar_whose_map_cannot_serve_is_refused_on_load(change, message):
    data = _old_sidecar()
    data["modes"]["blend"].update(change)
    with pytest.raises((ValueError, KeyError), match=message):
        Calibration.from_dict(data)


def test_tbps_calibrate_writes_the_sidecar_the_service_loads(tmp_path, capsys):
    from models.factory import create_model, file_sha256, load_encoder, save_checkpoint
    from service.cli.main import main
    from service.search.confidence import calibration_path, load_confidence
    from tests.models.conftest import tiny_vgsg, write_cuhk_fixture

    root = write_cuhk_fixture(tmp_path / "data", {"val": [7, 8, 9, 10]})
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, create_model(tiny_vgsg()).eval())
    argv = ["calibrate", "--checkpoint", str(checkpoint), "--root", str(root), "--split", "val",
            "--engine", "torch", "--device", "cpu"]
    # 8 images of 4 people: 1 ordered pair in 7 is the same person, so 0.1 is always reached
    assert main([*argv, "--precision", "0.1"]) == 0
    sidecar = tmp_path / "tiny.calibration.json"
    assert f"wrote {sidecar}" in capsys.readouterr().out
    cal = Calibration.load(sidecar)
    assert cal.checkpoint_sha256 == file_sha256(checkpoint) and cal.split == "val"
    assert cal.counts == {"images": 8, "captions": 16, "persons": 4}
    assert cal.same_person["precision"] >= 0.1 and cal.same_person["target_precision"] == 0.1
    encoder = load_encoder(checkpoint, device="cpu", engine="torch")
    assert calibration_path(checkpoint, None) == sidecar
    assert load_confidence(sidecar, encoder.spec) is not None
    assert main([*argv, "--precision", "0.1", "--map", "isotonic"]) == 0
    assert "held-out Brier platt" in capsys.readouterr().out
    assert all(fit["map"] == "isotonic" for fit in Calibration.load(sidecar).modes.values())
    assert main([*argv, "--precision", "1.5"]) == 2
    assert "not in (0, 1]" in capsys.readouterr().err
    assert main([*argv, "--balanced", "--map", "isotonic"]) == 2
    assert "Platt only" in capsys.readouterr().err
