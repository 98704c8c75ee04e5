"""The match calibration (models/calibration.py): the Platt fit, the same-person threshold, the
reliability table and the sidecar, each against a hand computation on small synthetic sets."""

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
    level,
    reliability,
    sidecar_path,
    threshold_at_precision,
)
from models.encoder import EncoderSpec, Part


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
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = json.loads(path.read_text())
    data["format"] = 99
    with pytest.raises(ValueError, match="format"):
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
    assert main([*argv, "--precision", "1.5"]) == 2
    assert "not in (0, 1]" in capsys.readouterr().err
