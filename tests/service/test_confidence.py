"""Match confidence on served hits (issue 26): a calibration sidecar for the tiny test encoder,
loaded by path (TBPS_CALIBRATION); every expected probability computed here from the sidecar's
parameters and the stored vectors, not by the service's code. The shared sidecar is written as
before the isotonic option (Platt's a, b and no ``map``): old sidecars keep serving."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
from PIL import Image

from models.calibration import Calibration
from service.search.confidence import load_confidence
from tests.conftest import make_image
from tests.service.conftest import indexed_client

TEXT = "a person in a red shirt"


def _p(mode: str, score: float, modes: dict) -> float:
    a, b = modes[mode]["a"], modes[mode]["b"]
    return round(1.0 / (1.0 + math.exp(-(a * score + b))), 3)


def _level(p: float) -> str:
    return "strong" if p >= 0.5 else "possible" if p >= 0.2 else "weak"


def _modes_for(tiny_encoder) -> dict:
    """Platt maps that put the 12-crop gallery's median score at p = 0.3 in every mode (so that
    all three levels occur), from the encoder's own vectors of the gallery images."""
    images = [Image.open(io.BytesIO(make_image(100 + i))).convert("RGB") for i in range(12)]
    vectors = tiny_encoder.encode_image(images)  # (12, D)
    text = tiny_encoder.encode_text([TEXT])  # (1, D)
    medians = {"text": float(np.median(text @ vectors.T)),
               "image": float(np.median((vectors @ vectors.T)[~np.eye(12, dtype=bool)]))}
    medians["blend"] = medians["image"]
    slope = 40.0
    return {m: {"a": slope, "b": math.log(0.3 / 0.7) - slope * med}
            for m, med in medians.items()}


def _sidecar(path, sha: str, modes: dict, text_weight: float = 0.25) -> Calibration:
    cal = Calibration(sha, modes, {"threshold": 1.5, "precision": 0.9, "recall": 0.4},
                      {"chosen": text_weight, "grid": []}, checkpoint="tiny.pt")
    cal.write(path)
    return cal


@pytest.fixture(scope="module")
def calibrated(shared_gallery, tiny_encoder, tmp_path_factory):
    """``shared_api`` with a sidecar that matches the tiny encoder -> (client, its modes)."""
    modes = _modes_for(tiny_encoder)
    path = tmp_path_factory.mktemp("calibration") / "tiny.calibration.json"
    _sidecar(path, tiny_encoder.spec.checkpoint_sha256, modes)
    settings = shared_gallery.model_copy(update={"calibration": path})
    for client in indexed_client(settings, tiny_encoder):
        yield client, modes


def _search(client, **body) -> dict:
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _all_scores(client, query: np.ndarray, leave_out=()) -> list[float]:
    live = client.app.state.engine.live_index()
    ids = live.live_ids()
    scores = live.vectors(ids) @ query[0]
    return [float(s) for i, s in zip(ids.tolist(), scores, strict=True) if i not in leave_out]


def test_text_hits_carry_the_text_maps_confidence_and_level(calibrated, tiny_encoder):
    client, modes = calibrated
    body = _search(client, description=TEXT, top_k=12)
    levels = set()
    for hit in body["hits"]:
        assert hit["confidence"] == pytest.approx(_p("text", hit["score"], modes), abs=1e-3)
        assert hit["match"] == _level(hit["confidence"])
        levels.add(hit["match"])
    assert levels == {"strong", "possible", "weak"}  # the maps were made to give all three
    every = _all_scores(client, tiny_encoder.encode_text([TEXT]))
    good = sum(_p("text", s, modes) >= 0.2 for s in every)
    assert body["good_matches"] == good
    assert body["best_match"] == body["hits"][0]["match"]
    # a short page counts the same good matches and names the same best level
    page = _search(client, description=TEXT, top_k=2)
    assert page["good_matches"] == good and page["best_match"] == body["best_match"]


def test_examples_use_the_image_map_and_a_blend_the_blend_map(calibrated):
    client, modes = calibrated
    first = _search(client, description=TEXT, top_k=12)["hits"]
    crop = first[0]["crop_id"]
    like = _search(client, like=[crop], top_k=11)
    for hit in like["hits"]:
        assert hit["confidence"] == pytest.approx(_p("image", hit["score"], modes), abs=1e-3)
    both = _search(client, description=TEXT, like=[crop], top_k=11)
    for hit in both["hits"]:
        assert hit["confidence"] == pytest.approx(_p("blend", hit["score"], modes), abs=1e-3)
    # the sidecar's text_weight (0.25) is the default weight
    assert both["hits"] == _search(client, description=TEXT, like=[crop], text_weight=0.25,
                                   top_k=11)["hits"]
    assert both["hits"] != _search(client, description=TEXT, like=[crop], text_weight=0.5,
                                   top_k=11)["hits"]


def test_person_groups_and_photo_searches_carry_confidence(calibrated):
    client, modes = calibrated
    persons = _search(client, description=TEXT, group_by="person", top_k=4)["persons"]
    for person in persons:
        assert person["confidence"] == pytest.approx(_p("text", person["score"], modes),
                                                     abs=1e-3)
        assert person["match"] == _level(person["confidence"])
        assert all(c["match"] is not None for c in person["crops"])
    photo = make_image(500)
    r = client.post("/search/image", files={"image": ("me.png", photo, "image/png")},
                    data={"top_k": "5"})
    assert r.status_code == 200, r.text
    for hit in r.json()["hits"]:
        assert hit["confidence"] == pytest.approx(_p("image", hit["score"], modes), abs=1e-3)
    assert r.json()["good_matches"] is not None


def test_a_sidecar_of_another_checkpoint_gives_null_fields(calibrated, tiny_encoder, tmp_path,
                                                           caplog):
    client, modes = calibrated
    other = tmp_path / "other.calibration.json"
    _sidecar(other, "sha-of-another-checkpoint", modes)
    with caplog.at_level(logging.WARNING, logger="service.search.confidence"):
        assert load_confidence(other, tiny_encoder.spec) is None
        assert load_confidence(tmp_path / "missing.json", tiny_encoder.spec) is None
    assert len(caplog.records) == 2 and "not the served" in caplog.records[0].message
    engine = client.app.state.engine
    kept = engine.confidence
    engine.confidence = load_confidence(other, tiny_encoder.spec)  # as a start-up would
    try:
        body = _search(client, description=TEXT, top_k=3)
        persons = _search(client, description=TEXT, group_by="person", top_k=2)["persons"]
    finally:
        engine.confidence = kept
    assert body["good_matches"] is None and body["best_match"] is None
    assert all(h["confidence"] is None and h["match"] is None for h in body["hits"])
    assert all(p["confidence"] is None and p["match"] is None for p in persons)


def _interpolated(score: float, xs: list[float], ps: list[float]) -> float:
    """Linear between breakpoints, the end values outside them, rounded as served."""
    if score <= xs[0]:
        return round(ps[0], 3)
    for i in range(1, len(xs)):
        if score <= xs[i]:
            slope = (ps[i] - ps[i - 1]) / (xs[i] - xs[i - 1])
            return round(ps[i - 1] + (score - xs[i - 1]) * slope, 3)
    return round(ps[-1], 3)


def _isotonic_modes(modes: dict) -> dict:
    """Isotonic maps around the score each Platt map puts at p = 0.3 (all levels occur)."""
    out = {}
    for mode, fit in modes.items():
        centre = (math.log(0.3 / 0.7) - fit["b"]) / fit["a"]
        out[mode] = {**fit, "map": "isotonic", "isotonic": {
            "score": [centre - 0.04, centre, centre + 0.02, centre + 0.05],
            "p": [0.01, 0.3, 0.55, 0.95]}}
    return out


def test_an_isotonic_sidecar_serves_its_breakpoints(calibrated, tiny_encoder, tmp_path):
    client, modes = calibrated
    iso = _isotonic_modes(modes)
    path = tmp_path / "isotonic.calibration.json"
    _sidecar(path, tiny_encoder.spec.checkpoint_sha256, iso)
    engine = client.app.state.engine
    kept = engine.confidence
    engine.confidence = load_confidence(path, tiny_encoder.spec)  # as a start-up would
    try:
        body = _search(client, description=TEXT, top_k=12)
        like = _search(client, like=[body["hits"][0]["crop_id"]], top_k=11)
    finally:
        engine.confidence = kept
    for hits, mode in ((body["hits"], "text"), (like["hits"], "image")):
        xs, ps = iso[mode]["isotonic"]["score"], iso[mode]["isotonic"]["p"]
        for hit in hits:
            assert hit["confidence"] == pytest.approx(_interpolated(hit["score"], xs, ps),
                                                      abs=1e-3)
            assert hit["match"] == _level(hit["confidence"])
    assert {h["match"] for h in body["hits"]} == {"strong", "possible", "weak"}
    every = _all_scores(client, tiny_encoder.encode_text([TEXT]))
    xs, ps = iso["text"]["isotonic"]["score"], iso["text"]["isotonic"]["p"]
    assert body["good_matches"] == sum(_interpolated(s, xs, ps) >= 0.2 for s in every)
    # the clamped ends: p 0.01 below the first breakpoint, 0.95 above the last; both occur
    low = [h["confidence"] for h in body["hits"] if h["score"] < xs[0]]
    high = [h["confidence"] for h in body["hits"] if h["score"] > xs[-1]]
    assert low and high and set(low) == {0.01} and set(high) == {0.95}


def test_an_isotonic_sidecar_with_broken_breakpoints_is_not_served(calibrated, tiny_encoder,
                                                                   tmp_path, caplog):
    _, modes = calibrated
    iso = _isotonic_modes(modes)
    iso["image"]["isotonic"]["p"] = [0.5, 0.3, 0.55, 0.95]  # falls: not a monotone map
    path = tmp_path / "broken.calibration.json"
    _sidecar(path, tiny_encoder.spec.checkpoint_sha256, iso)
    with caplog.at_level(logging.WARNING, logger="service.search.confidence"):
        assert load_confidence(path, tiny_encoder.spec) is None
    assert "not readable" in caplog.records[0].message


def test_openapi_documents_the_confidence_fields(calibrated):
    client, _ = calibrated
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name, fields in (("SearchHit", ("confidence", "match")),
                         ("PersonHit", ("confidence", "match")),
                         ("SearchResponse", ("good_matches", "best_match")),
                         ("CropSightings", ("threshold", "precision", "recall", "cameras"))):
        for field in fields:
            assert schemas[name]["properties"][field].get("description"), (name, field)
