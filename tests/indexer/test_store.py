import numpy as np
import pytest

from indexer.backends.base import split_pointer
from indexer.backends.faiss_store import IndexStore


def _vectors(n, d=16, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exact(v, ids, q, k):
    """Brute force over the float16-rounded vectors the store keeps."""
    s = q @ v.astype(np.float16).astype(np.float32).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), ids[order]


def test_flat_version_is_exact_inner_product(tmp_path):
    v, ids = _vectors(50), np.arange(100, 150)
    store = IndexStore(tmp_path)
    store.publish(store.write_version(v, ids, {"checkpoint_sha256": "x"}))
    scores, got = store.load().search(v[:3], 5)
    want_s, want_i = _exact(v, ids, v[:3], 5)
    np.testing.assert_array_equal(got, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5)


def test_mismatched_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        IndexStore(tmp_path).write_version(_vectors(5), np.arange(4), {})


def test_results_are_padded_to_k(tmp_path):
    store = IndexStore(tmp_path)
    store.publish(store.write_version(_vectors(3), np.arange(3), {}))
    scores, ids = store.load().search(_vectors(2, seed=1), 5)
    assert ids.shape == (2, 5) and (ids[:, 3:] == -1).all() and (ids[:, :3] >= 0).all()
    assert (np.diff(scores[:, :3], axis=1) <= 0).all()


def test_publish_swaps_atomically_and_keeps_previous(tmp_path):
    store = IndexStore(tmp_path)
    assert store.load() is None
    v1 = store.write_version(_vectors(4), np.arange(4), {"factory": "Flat"}, "v1")
    assert store.current_version() is None  # written, not yet live
    store.publish(v1)
    v2 = store.write_version(_vectors(7), np.arange(7), {"factory": "Flat"}, "v2")
    store.publish(v2)
    live = store.load()
    assert (live.version, live.count, live.manifest.count, live.manifest.dim) == (
        "v2", 7, 7, 16)
    assert store.previous_version() == "v1"
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".staging-*"))
    assert store.rollback() == "v1" and store.load().count == 4
    assert store.previous_version() == "v2"


def test_publishing_an_incomplete_version_is_refused(tmp_path):
    store = IndexStore(tmp_path)
    (tmp_path / "versions" / "half").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not complete"):
        store.publish("half")
    assert store.current_version() is None


def test_allowed_ids_filter_is_exact(tmp_path):
    v, ids = _vectors(200, seed=3), np.arange(1000, 1200)
    store = IndexStore(tmp_path)
    store.publish(store.write_version(v, ids, {}))
    allowed = ids[::7]
    _, got = store.load().search(v[:2], 5, allowed_ids=allowed)
    np.testing.assert_array_equal(got, _exact(v[::7], allowed, v[:2], 5)[1])


def test_deltas_add_replace_and_delete_as_new_generations(tmp_path):
    v, ids = _vectors(40), np.arange(40)
    store = IndexStore(tmp_path)
    store.publish(store.write_version(v[:30], ids[:30], {}, "base"))
    p1 = store.add_delta(ids[30:], v[30:], np.array([3, 4]))
    assert split_pointer(p1) == ("base", 1) and store.current_version() == p1
    p2 = store.add_delta(np.array([5]), v[39:40], np.array([31]))  # 5 gets 39's vector
    live = store.load()
    assert (live.version, live.count) == (p2, 37)
    assert store.previous_version() is None  # generations do not move PREVIOUS
    expect_ids = np.array([i for i in range(40) if i not in (3, 4, 31)])
    np.testing.assert_array_equal(live.live_ids(), expect_ids)
    np.testing.assert_allclose(live.vectors([5, 35]), v[[39, 35]], atol=2e-3)
    with pytest.raises(KeyError):
        live.vectors([3])
    truth = v.copy()
    truth[5] = v[39]
    q = _vectors(4, seed=9)
    want_s, want_i = _exact(truth[expect_ids], expect_ids, q, 10)
    scores, got = live.search(q, 10)
    np.testing.assert_array_equal(got, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    _, got = live.search(q, 3, allowed_ids=np.array([3, 5, 31, 35, 36]))
    assert set(got.ravel()) <= {5, 35, 36}


def test_delta_orphaned_by_a_kill_is_not_loaded(tmp_path):
    v, ids = _vectors(10), np.arange(10)
    store = IndexStore(tmp_path)
    store.publish(store.write_version(v[:8], ids[:8], {}, "base"))
    # a writer killed after writing generation 1 but before swapping CURRENT
    (tmp_path / "versions" / "base" / "deltas").mkdir()
    store._write_delta(tmp_path / "versions" / "base" / "deltas", 1, ids[8:], v[8:],
                       np.zeros(0, np.int64))
    assert store.load().count == 8
    store.add_delta(np.zeros(0, np.int64), np.zeros((0, 16)), np.array([0]))
    assert store.load().count == 7 and 8 not in store.load().live_ids()


def test_a_version_in_the_old_single_file_format_still_serves(tmp_path):
    import json

    import faiss

    v, ids = _vectors(20), np.arange(5, 25)
    folder = tmp_path / "versions" / "old"
    folder.mkdir(parents=True)
    index = faiss.index_factory(16, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add_with_ids(v, ids)
    faiss.write_index(index, str(folder / "index.faiss"))
    (folder / "manifest.json").write_text(json.dumps({"dim": 16, "count": 20}))
    store = IndexStore(tmp_path)
    store.publish("old")
    live = store.load()
    assert live.count == 20 and live.search(v[:1], 1)[1][0, 0] == 5
    np.testing.assert_allclose(live.vectors([7]), v[2:3], atol=2e-3)
