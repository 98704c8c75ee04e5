"""Every index backend through the interface alone (parametrize ``make_backend`` to add one)."""

import numpy as np
import pytest

from indexer.backends import IndexBackend, NoIndex, Rows, SearchFilter, create_backend
from indexer.filters import InSet

ENCODER = {"name": "synthetic", "dim": 8, "checkpoint_sha256": "sha-a", "parts": []}


def unit_rows(ids, seed=0):
    v = np.random.default_rng(seed).standard_normal((len(ids), 8)).astype(np.float32)
    return Rows(np.asarray(ids, np.int64), v / np.linalg.norm(v, axis=1, keepdims=True))


@pytest.fixture(params=["faiss", "milvus"])
def backend(request, tmp_path) -> IndexBackend:
    if request.param == "milvus":  # a real Milvus standalone (tests/indexer/conftest.py)
        return request.getfixturevalue("milvus_backend")
    return create_backend(request.param, root=tmp_path / "index")


def test_backend_lifecycle_through_the_interface(backend):
    assert isinstance(backend, IndexBackend) and backend.current_version() is None
    with pytest.raises(NoIndex):
        backend.add(unit_rows([1]))
    rows = unit_rows(range(1, 21))
    v1 = backend.build([rows.select(rows.ids <= 10), rows.select(rows.ids > 10)], total=20,
                       encoder=ENCODER)
    assert backend.current_version() is None  # built, not live
    backend.publish(v1)
    assert backend.manifest().built_by("sha-a") and backend.manifest().count == 20
    scores, ids = backend.search(rows.vectors[:3], 1)
    assert ids[:, 0].tolist() == [1, 2, 3] and np.allclose(scores[:, 0], 1.0, atol=1e-2)
    hits = backend.search(rows.vectors[:1], 5, allowed_ids=np.array([7, 9]))
    assert sorted(hits.ids[0, :2].tolist()) == [7, 9] and (hits.ids[0, 2:] == -1).all()
    backend.remove(np.array([1]))
    assert 1 not in backend.open().live_ids() and backend.open().count == 19
    backend.add(unit_rows([99], seed=3))
    assert backend.search(unit_rows([99], seed=3).vectors, 1).ids[0, 0] == 99
    assert backend.check() == []
    v2 = backend.build([unit_rows([5, 6])], total=2, encoder=ENCODER)
    backend.publish(v2)
    assert backend.open().count == 2
    assert backend.rollback().startswith(v1) and backend.open().count == 20


def test_build_refuses_a_wrong_total_and_duplicate_ids(backend):
    with pytest.raises(ValueError, match="rows given"):
        backend.build([unit_rows([1, 2])], total=3, encoder=ENCODER)
    with pytest.raises(ValueError, match="unique"):
        backend.build([unit_rows([1]), unit_rows([1])], total=2, encoder=ENCODER)
    assert backend.current_version() is None


def test_a_filter_the_engine_cannot_apply_is_refused(backend):
    if backend.filters_in_engine:
        pytest.skip("this backend filters inside its engine")
    backend.publish(backend.build([unit_rows([1, 2])], total=2, encoder=ENCODER))
    with pytest.raises(ValueError, match="allowed_ids"):
        backend.search(unit_rows([1]).vectors, 1,
                       filter=SearchFilter((InSet("camera_id", frozenset({1})),)))
