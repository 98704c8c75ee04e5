"""The filter spec (service.search.filters): min_height through POST /search, POST /search/image,
the OpenAPI document and `tbps search`; every filter's mask and Milvus expression agree.

Run with TBPS_INDEX_BACKEND=milvus for the Milvus backend (the filter is then pushed into the
engine: its rows carry each crop's height)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.filters import InSet, Range, SearchFilter
from indexer.manifest import Manifest
from service.jobs.ingest import ingest_bytes
from service.jobs.worker import run_pending
from service.main import create_app
from service.search.filters import FILTERS
from service.store.db import session_scope
from tests.conftest import make_image
from tests.service.conftest import ADMIN_KEY, T0

HEIGHTS = [40, 64, 80, 96, 120, 160, 60, 200, 90, 100]  # crop i: 48 x HEIGHTS[i] pixels


@pytest.fixture
def sized_api(admin_settings, tiny_encoder):
    """An indexed gallery of crops of different heights over two cameras."""
    with session_scope(admin_settings.resolved_database_url) as session:
        for i, height in enumerate(HEIGHTS):
            ingest_bytes(session, admin_settings, name=f"h{i}.png",
                         data=make_image(300 + i, size=(48, height)), camera=f"cam-{i % 2}",
                         captured_at=T0 + timedelta(hours=i), person_id=None)
    with TestClient(create_app(admin_settings, encoder=tiny_encoder)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/admin/reindex").status_code == 202
        assert run_pending(admin_settings, tiny_encoder) == 1
        yield client


def search(api, **body) -> dict:
    r = api.post("/search", json={"description": "a person", "top_k": 20, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_min_height_leaves_out_lower_crops_exactly(sized_api):
    everything = search(sized_api)["hits"]
    assert sorted(h["height"] for h in everything) == sorted(HEIGHTS)
    for low in (1, 90, 96, 97, 200, 201):
        body = search(sized_api, min_height=low)
        want = [h["crop_id"] for h in everything if h["height"] >= low]
        assert [h["crop_id"] for h in body["hits"]] == want, low  # in the unfiltered order
        assert body["matching"] == len(want)
    both = search(sized_api, min_height=90, cameras=["cam-1"],
                  time_from=(T0 + timedelta(hours=3)).isoformat())["hits"]
    assert [h["crop_id"] for h in both] == [
        h["crop_id"] for h in everything if h["height"] >= 90 and h["camera"] == "cam-1"
        and h["captured_at"] >= (T0 + timedelta(hours=3)).isoformat().replace("+00:00", "Z")]


def test_min_height_pages_with_a_cursor(sized_api):
    first = search(sized_api, min_height=80, top_k=3)
    assert first["next_cursor"]
    rest = search(sized_api, min_height=80, top_k=20, cursor=first["next_cursor"])
    shown = [h["crop_id"] for h in first["hits"] + rest["hits"]]
    assert len(shown) == len(set(shown)) == sum(h >= 80 for h in HEIGHTS)
    r = sized_api.post("/search", json={"description": "a person", "min_height": 81,
                                        "cursor": first["next_cursor"]})
    assert r.status_code == 400 and "another query" in r.json()["detail"]


@pytest.mark.parametrize(("value", "words"), [
    (0, "greater than or equal to 1"), (-5, "greater than or equal to 1"),
    (100_001, "less than or equal to 100000"), ("96", "not a string or a boolean"),
    (96.5, "valid integer"), (True, "not a string or a boolean"), ([96], "valid integer")])
def test_a_bad_min_height_is_422_naming_the_field(sized_api, value, words):
    r = sized_api.post("/search", json={"description": "a person", "min_height": value})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "min_height"]
    assert words in r.json()["detail"][0]["msg"]


def test_search_image_takes_min_height_as_a_form_field(sized_api):
    photo = make_image(7, size=(48, 96))
    r = sized_api.post("/search/image", files={"image": ("q.png", photo, "image/png")},
                       data={"min_height": "100", "cameras": ["cam-0", "cam-1"], "top_k": "20"})
    assert r.status_code == 200, r.text
    assert sorted(h["height"] for h in r.json()["hits"]) == sorted(h for h in HEIGHTS if h >= 100)
    r = sized_api.post("/search/image", files={"image": ("q.png", photo, "image/png")},
                       data={"min_height": "0"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "min_height"


def test_openapi_documents_every_filter_in_both_searches(sized_api):
    doc = sized_api.get("/openapi.json").json()
    request = doc["components"]["schemas"]["SearchRequest"]["properties"]
    height = request["min_height"]["anyOf"][0]
    assert (height["type"], height["minimum"], height["maximum"]) == ("integer", 1, 100_000)
    form_ref = doc["paths"]["/search/image"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    form = doc["components"]["schemas"][form_ref]["properties"]
    for spec in FILTERS:
        for name in spec.fields:
            assert name in request and name in form, name
            assert request[name].get("description") == form[name].get("description"), name


def test_tbps_search_refuses_a_bad_min_height():
    out = subprocess.run([sys.executable, "-m", "service.cli", "search", "someone",
                          "--min-height", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--min-height: Input should be greater than or equal to 1" in out.stderr


def test_each_condition_mask_and_milvus_expression_agree_on_unknowns():
    columns = {"camera_id": np.array([1, -1, 2]), "ts": np.array([5.0, np.nan, 9.0]),
               "height": np.array([50, -1, 120])}
    flt = SearchFilter((InSet("camera_id", frozenset({1, 2})), Range("ts", 4.0, 9.0),
                        Range("height", low=60)))
    assert flt.mask(columns).tolist() == [False, False, True]
    assert flt.expression() == ("camera_id in [1, 2] and ts != -9007199254740992.000000 and "
                                "ts >= 4.000000 and ts <= 9.000000 and height != -1 and "
                                "height >= 60")
    assert flt.attributes == {"camera_id", "ts", "height"}
    assert SearchFilter((InSet("camera_id", frozenset()),)).expression() is None


def test_versions_built_before_an_attribute_do_not_claim_it():
    """A Milvus version built before ``height`` existed has no such field: its manifest says
    so, and the service filters it by the catalog's ids instead of pushing the filter."""
    old = Manifest.from_dict({"checkpoint_sha256": "x", "dim": 4, "count": 1,
                              "backend": "milvus"})
    assert old.attributes == ("camera_id", "ts")
    assert "height" not in old.attributes
    assert Manifest.from_dict({"dim": 4, "count": 1}).attributes == ()
    new = Manifest.from_dict(old.replace(attributes=("camera_id", "ts", "height")).to_dict())
    assert new.attributes == ("camera_id", "ts", "height")
