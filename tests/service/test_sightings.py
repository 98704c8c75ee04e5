"""GET /crops/{crop_id}/sightings (issue 26): the person in a crop found again by appearance
(its search by example above the calibrated same-person threshold) and by stored person id."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.calibration import Calibration
from service.jobs.ingest import ingest_bytes
from service.main import create_app
from service.store.db import session_scope
from tests.conftest import make_image
from tests.service.conftest import T0, indexed_client


def _variant(seed: int, shade: int) -> bytes:
    """The same person again: make_image(seed) a shade brighter (another file, another sha;
    the untrained tiny encoder tells such crops apart from other seeds by ~0.02)."""
    pixels = np.asarray(Image.open(io.BytesIO(make_image(seed))).convert("RGB"), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels + shade, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# name -> (person seed, shade, camera, hours after T0 or None, stored person id)
CROPS = {
    "a0": (1, 0, "gate", 3, None), "a1": (1, 1, "hall", 1, None),
    "a2": (1, 2, "gate", None, None), "a3": (1, 3, "yard", 7, None),
    "b0": (2, 0, "gate", 2, "track-b"), "b1": (2, 1, "hall", 4, "track-b"),
    "b2": (2, 2, "yard", 5, None),
    "c0": (3, 0, "gate", 6, None), "d0": (4, 0, "hall", 8, None), "e0": (5, 0, "yard", 9, None),
}


def _threshold(tiny_encoder) -> float:
    """Midway between the lowest same-person and the highest other-person score of the
    gallery under the tiny encoder (asserting that such a gap exists)."""
    names = list(CROPS)
    images = [Image.open(io.BytesIO(_variant(CROPS[n][0], CROPS[n][1]))).convert("RGB")
              for n in names]
    vectors = tiny_encoder.encode_image(images)  # (N, D)
    sim = vectors @ vectors.T
    seeds = np.asarray([CROPS[n][0] for n in names])
    same, off = seeds[:, None] == seeds[None, :], ~np.eye(len(names), dtype=bool)
    low, high = sim[same & off].min(), sim[~same].max()
    assert low - high > 0.01, "the synthetic persons must be told apart by appearance"
    return float((low + high) / 2)


@pytest.fixture
def sighted(admin_settings, tiny_encoder, tmp_path):
    """A gallery of 5 people, person ids only on two of b's crops, and a sidecar whose
    same-person threshold separates them -> (settings, crop id by name, threshold)."""
    ids = {}
    with session_scope(admin_settings.resolved_database_url) as session:
        for name, (seed, shade, camera, hours, person) in CROPS.items():
            when = T0 + timedelta(hours=hours) if hours is not None else None
            result = ingest_bytes(session, admin_settings, name=f"{name}.png",
                                  data=_variant(seed, shade), camera=camera, captured_at=when,
                                  person_id=person)
            ids[name] = result.crop_id
    threshold = _threshold(tiny_encoder)
    path = tmp_path / "tiny.calibration.json"
    Calibration(tiny_encoder.spec.checkpoint_sha256,
                {m: {"a": 10.0, "b": -10.0 * threshold} for m in ("text", "image", "blend")},
                {"threshold": threshold, "precision": 0.9, "recall": 0.35},
                {"chosen": 0.5, "grid": []}).write(path)
    return admin_settings.model_copy(update={"calibration": path}), ids, threshold


def test_sightings_by_appearance_without_person_ids(sighted, tiny_encoder):
    settings, ids, threshold = sighted
    with TestClient(create_app(settings, encoder=tiny_encoder)) as bare:  # nothing indexed yet
        r = bare.get(f"/crops/{ids['a0']}/sightings")
        assert r.status_code == 503 and "no index" in r.json()["detail"]
    for client in indexed_client(settings, tiny_encoder):
        r = client.get(f"/crops/{ids['a0']}/sightings")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["crop_id"] == ids["a0"] and body["person_id"] is None
        assert body["threshold"] == pytest.approx(threshold)
        assert body["precision"] == 0.9 and body["recall"] == 0.35 and not body["truncated"]
        # a's four crops, in capture-time order (1h, 3h, 7h, then the one without a time)
        got = [(s["crop_id"], s["by"]) for s in body["sightings"]]
        assert got == [(ids["a1"], "appearance"), (ids["a0"], "self"),
                       (ids["a3"], "appearance"), (ids["a2"], "appearance")]
        for s in body["sightings"]:
            if s["by"] == "appearance":
                assert s["confidence"] > 0.5  # above the threshold: sigmoid(10 * margin) > 0.5
            assert s["image_url"].startswith(f"/crops/{s['crop_id']}/image")
        assert body["cameras"] == [
            {"camera": "hall", "first_seen": "2026-05-01T09:00:00Z",
             "last_seen": "2026-05-01T09:00:00Z", "count": 1},
            {"camera": "gate", "first_seen": "2026-05-01T11:00:00Z",
             "last_seen": "2026-05-01T11:00:00Z", "count": 2},
            {"camera": "yard", "first_seen": "2026-05-01T15:00:00Z",
             "last_seen": "2026-05-01T15:00:00Z", "count": 1}]
        # b: two crops share a track id, the third is found by appearance alone
        b = client.get(f"/crops/{ids['b0']}/sightings").json()
        assert b["person_id"] == "track-b"
        assert [(s["crop_id"], s["by"]) for s in b["sightings"]] == [
            (ids["b0"], "self"), (ids["b1"], "both"), (ids["b2"], "appearance")]
        # someone seen once: only the crop itself
        c = client.get(f"/crops/{ids['c0']}/sightings").json()
        assert [s["by"] for s in c["sightings"]] == ["self"]
        # unknown and deleted crops are named in a 404
        r = client.get("/crops/999999/sightings")
        assert r.status_code == 404 and "999999" in r.json()["detail"]
        assert client.delete(f"/admin/crops/{ids['e0']}").status_code == 200
        r = client.get(f"/crops/{ids['e0']}/sightings")
        assert r.status_code == 404 and str(ids["e0"]) in r.json()["detail"]
        # a crop added since the last index: found in the gallery, not yet by appearance
        with session_scope(settings.resolved_database_url) as session:
            late = ingest_bytes(session, settings, name="late.png", data=make_image(77),
                                camera="gate").crop_id
        r = client.get(f"/crops/{late}/sightings")
        assert r.status_code == 404 and "not in the live index yet" in r.json()["detail"]


def test_sightings_by_person_id_alone_without_calibration(shared_api):
    """The demo-like gallery (person p{i // 3}) and no sidecar for the tiny encoder."""
    crops = shared_api.post("/search", json={"description": "a person", "top_k": 12}).json()
    one = next(h for h in crops["hits"] if h["person_id"] == "p1")
    body = shared_api.get(f"/crops/{one['crop_id']}/sightings").json()
    assert body["threshold"] is None and body["person_id"] == "p1"
    same = sorted((h for h in crops["hits"] if h["person_id"] == "p1"),
                  key=lambda h: h["captured_at"])
    assert [s["crop_id"] for s in body["sightings"]] == [h["crop_id"] for h in same]
    assert {s["by"] for s in body["sightings"] if s["crop_id"] != one["crop_id"]} == {
        "person_id"}
    assert sum(c["count"] for c in body["cameras"]) == 3
