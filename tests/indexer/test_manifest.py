import json

import numpy as np
import pytest

from indexer.backends import BackendUnavailable, Rows, SearchFilter, create_backend
from indexer.filters import InSet, Range
from indexer.manifest import FirstStage, Manifest
from models.encoder import EncoderSpec


def _spec(sha: str) -> EncoderSpec:
    return EncoderSpec("tiny", 8, sha, (16, 8), (0.5,) * 3, (0.5,) * 3)


def test_manifest_round_trips_and_keeps_unknown_keys():
    m = Manifest.new(encoder=_spec("abc").to_dict(), count=3, dim=8, factory="IVF64,SQ8",
                     first_stage=FirstStage("IVF64,SQ8", start=0, stop=4, nlist=64))
    again = Manifest.from_json(json.dumps({**m.to_dict(), "future_key": [1, 2]}))
    assert again.replace(extra={}).to_dict() == json.loads(m.to_json())
    assert again.built_by(_spec("abc")) and again.dim == 8
    assert again.extra == {"future_key": [1, 2]}
    assert again.to_dict()["future_key"] == [1, 2]
    assert again.first_stage.stop == 4 and not again.exact


def test_manifest_reads_an_old_dict_and_answers_built_by():
    old = {"checkpoint_sha256": "abc", "factory": "IDMap2,Flat", "count": 2, "dim": 8,
           "version": "20240101T000000000000Z"}
    m = Manifest.from_dict(old)
    assert (m.factory, m.exact, m.encoder, m.version) == ("Flat", True, {}, old["version"])
    assert m.built_by(_spec("abc")) and m.built_by("abc")
    assert not m.built_by(_spec("other"))
    assert m.same_factory(None) and m.same_factory("IDMap,Flat") and not m.same_factory("HNSW32")


def test_rows_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        Rows(np.arange(3), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="camera_id"):
        Rows(np.arange(2), np.zeros((2, 4), np.float32), {"camera_id": np.arange(3)})
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        Rows(np.arange(2), np.zeros((2, 4), np.float32), {"colour": np.arange(2)})
    rows = Rows(np.arange(4), np.eye(4, dtype=np.float32), {"camera_id": np.array([1, 2, 1, 2])})
    picked = rows.select(rows.attributes["camera_id"] == 1)
    assert picked.ids.tolist() == [0, 2] and picked.attributes["camera_id"].tolist() == [1, 1]


def test_search_filter_reference_semantics():
    f = SearchFilter((InSet("camera_id", frozenset({1})), Range("ts", 10.0, 20.0)))
    cams, times = np.array([1, 1, 2, 1]), np.array([10.0, np.nan, 15.0, 21.0])
    assert f.mask({"camera_id": cams, "ts": times}).tolist() == [True, False, False, False]
    assert SearchFilter().empty and not f.empty


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailable, match="unknown index backend 'nope'"):
        create_backend("nope", root=".")
