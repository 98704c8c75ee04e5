"""The search suite every index backend passes: FAISS on local files and Milvus on the real
server the session starts. Exact specs must return the exact top k under camera and time
filters; two-stage specs the exact two-stage answer; writes change the pointer."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.backends.base import NoIndex, Rows, SearchFilter
from tests.indexer.backend_data import (
    DIM,
    T0,
    encoder_dict,
    exact_top,
    make_rows,
    queries,
    two_stage_top,
    where,
)


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest, tmp_path):
    if request.param == "milvus":
        return request.getfixturevalue("milvus_backend")
    from indexer.backends import BackendUnavailable, create_backend

    try:
        return create_backend("faiss", root=tmp_path / "index")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


def built(backend, rows: Rows, factory: str | None = None) -> str:
    version = backend.build([rows], total=len(rows), encoder=encoder_dict(), factory=factory)
    backend.publish(version)
    return version


def stored(backend, rows: Rows) -> Rows:
    """The rows as the backend keeps them (FAISS: float16), the exact reference's input."""
    dtype = np.dtype(backend.manifest().vectors_dtype)
    return Rows(rows.ids, rows.vectors.astype(dtype).astype(np.float32), rows.attributes)


def search(backend, rows: Rows, q: np.ndarray, k: int, flt: SearchFilter | None):
    """A filtered search as the service runs it: in the engine, or as the catalog's crop ids
    for a backend that filters by ids only (FAISS)."""
    if flt is None or backend.filters_in_engine:
        return backend.search(q, k, filter=flt)
    return backend.search(q, k, allowed_ids=rows.ids[flt.mask(rows.attributes)])


FILTERS = [
    None,
    where(cameras={1, 3}),
    where(time_from=T0 + 600, time_to=T0 + 6000),
    where(cameras={2}, time_from=T0 + 1200),
    where(time_to=T0 + 3000),
    where(min_height=120),
    where(cameras={0, 2}, min_height=60, time_to=T0 + 5000),
]


@pytest.mark.parametrize("flt", FILTERS)
def test_exact_search_is_the_exact_top_k_among_the_rows_that_pass(backend, flt) -> None:
    rows = make_rows(300)
    built(backend, rows)
    rows = stored(backend, rows)
    q = queries(3)
    hits = search(backend, rows, q, 10, flt)
    for i in range(len(q)):
        ids, scores = exact_top(rows, q[i], 10, flt)
        assert hits.ids[i, :len(ids)].tolist() == ids.tolist()
        np.testing.assert_allclose(hits.scores[i, :len(ids)], scores, atol=1e-4)
    assert backend.manifest().factory == "Flat" and backend.manifest().count == 300


def test_unknown_times_fail_every_time_condition(backend) -> None:
    rows = make_rows(100)
    built(backend, rows)
    unknown = set(rows.ids[np.isnan(rows.attributes["ts"])].tolist())
    hits = search(backend, rows, queries(2), 100, where(time_to=T0 + 1e9))
    returned = set(hits.ids[hits.ids >= 0].tolist())
    assert returned and not returned & unknown


def test_too_few_rows_pad_and_an_empty_camera_set_matches_nothing(backend) -> None:
    rows = make_rows(50)
    built(backend, rows)
    flt = where(cameras={0})
    hits = search(backend, rows, queries(1), 60, flt)
    n = int(flt.mask(rows.attributes).sum())
    assert (hits.ids[0, n:] == -1).all() and (hits.ids[0, :n] >= 0).all()
    none = search(backend, rows, queries(1), 5, where(cameras=set()))
    assert (none.ids == -1).all()


def test_allowed_ids_restrict_the_answer(backend) -> None:
    rows = make_rows(200)
    built(backend, rows)
    allowed = rows.ids[::3]
    hits = backend.search(queries(2), 10, allowed_ids=allowed)
    assert set(hits.ids.ravel().tolist()) <= set(allowed.tolist())


@pytest.mark.parametrize("flt", [None, where(cameras={0, 1})])
def test_two_stage_search_reranks_the_global_candidates_on_full_vectors(backend, flt) -> None:
    rows = make_rows(600, seed=3)
    built(backend, rows, factory="IVF8,Flat")  # 8 lists, all probed: exact first stage
    manifest = backend.manifest()
    rows = stored(backend, rows)
    assert manifest.first_stage is not None and manifest.first_stage.input == "global"
    q = queries(4, seed=5)
    hits = search(backend, rows, q, 10, flt)
    for i in range(len(q)):
        want = two_stage_top(rows, q[i], 10, manifest.first_stage.candidates, flt)
        assert hits.ids[i].tolist() == want.tolist()
        full = rows.vectors[np.searchsorted(rows.ids, hits.ids[i])] @ q[i]
        np.testing.assert_allclose(hits.scores[i], full, atol=1e-5)


def test_add_and_remove_change_the_pointer_and_the_answer(backend) -> None:
    rows = make_rows(100)
    built(backend, rows)
    before = backend.current_version()
    q = queries(1)
    top = int(backend.search(q, 1).ids[0, 0])
    after_remove = backend.remove(np.array([top]))
    assert after_remove != before
    assert top not in backend.search(q, 20).ids[0].tolist()
    twin = Rows(np.array([10_000]), q.copy(), {"camera_id": np.array([2]), "ts": np.array([T0])})
    after_add = backend.add(twin)
    assert after_add not in (before, after_remove)
    hits = backend.search(q, 1)
    assert hits.ids[0, 0] == 10_000 and hits.scores[0, 0] == pytest.approx(2.0, abs=1e-3)
    assert backend.open().count == 100


def test_the_manifest_count_is_the_builds_and_the_view_count_is_live(backend) -> None:
    rows = make_rows(60)
    version = built(backend, rows)
    backend.remove(rows.ids[:7])
    backend.add(make_rows(3, seed=8, first_id=900))
    assert backend.manifest().count == backend.manifest(version).count == 60
    assert backend.open().count == 56 and len(backend.open().live_ids()) == 56
    assert backend.check() == []


def test_add_replaces_a_row_with_the_same_id(backend) -> None:
    rows = make_rows(40)
    built(backend, rows)
    q = queries(1)
    backend.add(Rows(rows.ids[:1], q.copy(), rows.select(np.arange(len(rows)) < 1).attributes))
    view = backend.open()
    assert view.count == 40
    np.testing.assert_allclose(view.vectors(rows.ids[:1]), q, atol=1e-3)


def test_publish_and_rollback_swap_versions(backend) -> None:
    first = built(backend, make_rows(30, seed=1))
    second = built(backend, make_rows(50, seed=2))
    assert backend.manifest().count == 50 and backend.previous_version().startswith(first)
    backend.rollback()
    assert backend.current_version().startswith(first) and backend.manifest().count == 30
    assert backend.previous_version().startswith(second)


def test_vectors_and_live_ids_read_back_what_was_stored(backend) -> None:
    rows = make_rows(64)
    built(backend, rows)
    view = backend.open()
    np.testing.assert_array_equal(view.live_ids(), rows.ids)
    np.testing.assert_allclose(view.vectors(rows.ids[[5, 2]]), rows.vectors[[5, 2]], atol=1e-3)
    with pytest.raises(KeyError):
        view.vectors(np.array([999_999]))


def test_vectors_by_crop_id_follow_adds_and_removes(backend) -> None:
    """What a search by example reads: the live vectors of the ids asked for, in that order;
    a removed id is a KeyError naming it (the service answers 404)."""
    rows = make_rows(40)
    built(backend, rows)
    backend.remove(rows.ids[[16, 22]])  # crops 17 and 23
    extra = make_rows(2, seed=5, first_id=700)
    backend.add(extra)
    view = backend.open()
    asked = np.array([701, int(rows.ids[3]), 700, int(rows.ids[2])])
    want = np.concatenate([extra.vectors[1:], rows.vectors[3:4], extra.vectors[:1],
                           rows.vectors[2:3]])
    np.testing.assert_allclose(view.vectors(asked), want, atol=1e-3)
    for gone in (17, 23):
        with pytest.raises(KeyError, match=rf"\b{gone}\b"):
            view.vectors(np.array([gone, 700]))


def test_check_is_clean_after_build_and_writes(backend) -> None:
    rows = make_rows(80)
    built(backend, rows, factory="IVF8,Flat")
    backend.remove(rows.ids[:5])
    backend.add(make_rows(10, seed=4, first_id=500))
    assert backend.check() == []
    assert backend.open().count == 85


def test_nothing_live_is_a_clear_error(backend) -> None:
    assert backend.current_version() is None and backend.open() is None
    with pytest.raises(NoIndex):
        backend.search(queries(1), 5)
    with pytest.raises(NoIndex):
        backend.add(make_rows(2))
    with pytest.raises(NoIndex):
        backend.rollback()


def test_a_short_build_is_refused_and_left_unfinished(backend) -> None:
    rows = make_rows(20)
    with pytest.raises(ValueError, match="20 rows given"):
        backend.build([rows], total=30, encoder=encoder_dict())
    assert backend.current_version() is None
    assert backend.unfinished()
    backend.prune()
    assert backend.unfinished() == []
    assert DIM == rows.dim
