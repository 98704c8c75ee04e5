"""The image limits are the settings' (TBPS_MAX_UPLOAD_BYTES, TBPS_MAX_IMAGE_PIXELS), for
uploads and for the indexer alike: lowered below a stored crop, the next job reports that crop
failed with the setting's limit; an upload over them is refused and stores nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from indexer.limits import ImageLimits
from service.config import Settings
from service.jobs.ingest import ingest_bytes
from service.jobs.worker import run_pending
from service.main import create_app
from service.store import crud
from service.store.db import session_scope
from service.store.orm import CropStatus
from tests.conftest import make_image

BIG = make_image(7, size=(96, 192))  # the gallery's crops are 48x96
FORM = {"camera": "cam-0", "captured_at": "2026-06-01T08:00:00Z"}


def _lowered(settings: Settings, setting: str) -> tuple[Settings, str]:
    """Settings one unit below ``BIG`` on ``setting``, and what the indexer then says."""
    if setting == "max_image_pixels":
        value, reason = 48 * 96, "oversized: 96x192 pixels; the limit is 4608 pixels"
    else:
        value = len(BIG) - 1
        reason = f"oversized: {len(BIG)} bytes; the limit is {value} bytes"
    return settings.model_copy(update={setting: value}), reason


def test_the_settings_default_to_the_indexers_limits_and_hand_them_over():
    s = Settings(environment="test", max_upload_bytes=1234, max_image_pixels=5678)
    assert s.image_limits == ImageLimits(max_bytes=1234, max_pixels=5678)
    assert Settings(environment="test").image_limits == ImageLimits()


@pytest.mark.parametrize(("setting", "job"), [("max_image_pixels", "reindex"),
                                              ("max_upload_bytes", "add")])
def test_a_crop_over_a_lowered_setting_is_reported_failed_by_the_indexer(gallery, tiny_encoder,
                                                                         setting, job):
    url = gallery.resolved_database_url
    with session_scope(url) as s:
        big = ingest_bytes(s, gallery, name="big.png", data=BIG, camera="cam-0").crop_id
        crud.create_job(s, kind=job)
    lowered, reason = _lowered(gallery, setting)
    assert run_pending(lowered, tiny_encoder) == 1
    with session_scope(url) as s:
        crop = crud.get_crop(s, crop_id=big)
        assert (crop.status, crop.error) == (CropStatus.failed, reason)
        assert crud.count_crops(s, statuses=[CropStatus.indexed]) == 12  # the others are in


@pytest.mark.parametrize("setting", ["max_image_pixels", "max_upload_bytes"])
def test_an_upload_over_a_setting_is_refused_and_stores_nothing(api, gallery, tiny_encoder,
                                                                setting):
    lowered, _ = _lowered(gallery, setting)
    before = sorted(gallery.resolved_crops_dir.rglob("*"))
    with TestClient(create_app(lowered, encoder=tiny_encoder)) as client:
        client.headers.update(api.headers)
        r = client.post("/admin/crops", data=FORM,
                        files=[("files", ("big.png", BIG, "image/png"))])
        assert r.status_code == 422, r.text
        reason = r.json()["files"][0]["reason"]
        assert "the limit is" in reason and ("pixels" if "pixels" in setting else "bytes") in reason
        hits = client.post("/search", json={"description": "someone", "top_k": 100}).json()
    assert sorted(gallery.resolved_crops_dir.rglob("*")) == before
    assert len(hits["hits"]) == 12  # what was stored and indexed is all still there
    with session_scope(gallery.resolved_database_url) as s:
        assert crud.count_crops(s) == 12
