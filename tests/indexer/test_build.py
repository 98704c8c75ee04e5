"""Every approximate spec is checked against exact search on the same data."""

import numpy as np
import pytest

from indexer.backends.faiss_backend import write_first_stage
from indexer.backends.faiss_store import IndexStore
from indexer.spec import FLAT_MAX, IndexSpec, choose_spec, global_slice, normalise_factory
from indexer.writer import write_arrays
from models.encoder import EncoderSpec, Part

G, K = 16, 2  # global dim, stripes of G each


def two_part_vectors(n, seed=0, clusters=40):
    """Vectors shaped like VGSG exports, [l2n(global), l2n(local)] (norm sqrt(2)): both parts
    are projections of one clustered latent per item, plus a little noise of their own."""
    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(1234).standard_normal((2, 24, G * (1 + K)))
    latent = rng.standard_normal((clusters, 24))[rng.integers(0, clusters, n)]
    latent += 0.7 * rng.standard_normal((n, 24))  # (N, L) identity + item variation
    g = latent @ proj[0, :, :G] + 0.5 * rng.standard_normal((n, G))
    loc = latent @ proj[1, :, G:] + 0.5 * rng.standard_normal((n, G * K))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    loc /= np.linalg.norm(loc, axis=1, keepdims=True)
    return np.hstack([g, loc]).astype(np.float32)


def encoder_spec():
    parts = (Part("global", 0, G, "global"),) + tuple(
        Part(f"stripe_{i}", G * (i + 1), G * (i + 2), "local") for i in range(K))
    return EncoderSpec("synthetic", G * (1 + K), "sha-test", (8, 4), (0.5,) * 3, (0.5,) * 3,
                       parts)


def build(tmp_path, vectors, ids, factory):
    store = IndexStore(tmp_path)
    staging = store.staging_dir("v1")
    write_arrays(staging, vectors, ids)
    full = np.load(staging / "vectors.npy", mmap_mode="r")
    spec = choose_spec(len(ids), factory)
    spec = IndexSpec(spec.factory, spec.input, nprobe=16, candidates=256)
    manifest = write_first_stage(staging, full, spec, encoder_spec().to_dict())
    store.commit_staging(staging, "v1", manifest)
    store.publish("v1")
    return store.load()


def exact_top(vectors, ids, queries, k):
    scores = queries @ vectors.astype(np.float16).astype(np.float32).T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(got, want):
    return np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)])


@pytest.mark.parametrize(("factory", "min_recall"), [
    ("IVF32_HNSW16,SQ8", 0.95), ("IVF32,Flat", 0.95), ("HNSW16", 0.95),
    ("IVF32_HNSW16,PQ8x4", 0.9),  # 4-byte codes: coarser candidates, the re-rank keeps most
    ("full:IVF32,SQ8", 0.95),  # the first stage over the full vector
])
def test_two_stage_specs_match_exact_search(tmp_path, factory, min_recall):
    v, ids = two_part_vectors(3000), np.arange(10, 3010)
    queries = two_part_vectors(30, seed=1)
    live = build(tmp_path, v, ids, factory)
    stop = G * (1 + K) if factory.startswith("full:") else G
    assert live.manifest.first_stage.stop == stop and live.first_stage.ntotal == 3000
    assert live.manifest.factory == factory
    scores, got = live.search(queries, 10)
    want_s, want = exact_top(v, ids, queries, 10)
    assert recall(got, want) >= min_recall
    # scores are the full inner product of the stored vectors, best first
    full = np.einsum("qd,qkd->qk", queries, live.vectors(got.ravel()).reshape(30, 10, -1))
    np.testing.assert_allclose(scores, full, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_two_stage_filter_is_exact_for_narrow_and_close_for_wide_sets(tmp_path):
    v, ids = two_part_vectors(3000, seed=2), np.arange(3000)
    queries = two_part_vectors(10, seed=3)
    live = build(tmp_path, v, ids, "IVF32_HNSW16,SQ8")
    narrow = ids[::50]
    _, got = live.search(queries, 5, allowed_ids=narrow)
    np.testing.assert_array_equal(got, exact_top(v[::50], narrow, queries, 5)[1])
    wide = ids[ids % 3 != 0]
    _, got = live.search(queries, 10, allowed_ids=wide)
    assert set(got.ravel()) <= set(wide)
    assert recall(got, exact_top(v[wide], wide, queries, 10)[1]) >= 0.9


def test_two_stage_honours_deletes_and_adds(tmp_path):
    v, ids = two_part_vectors(2000, seed=4), np.arange(2000)
    extra = two_part_vectors(50, seed=5)
    live = build(tmp_path, v, ids, "IVF32_HNSW16,SQ8")
    q = v[:5]  # each query's best hit is itself
    assert (live.search(q, 1)[1][:, 0] == ids[:5]).all()
    store = IndexStore(tmp_path)
    store.add_delta(np.arange(5000, 5050), extra, np.array([0, 1, 2]))
    live = store.load()
    _, got = live.search(np.vstack([q, extra[:3]]), 1)
    assert not {0, 1, 2} & set(got.ravel())
    assert list(got[5:, 0]) == [5000, 5001, 5002]


def test_spec_is_chosen_by_gallery_size_and_overridable():
    assert choose_spec(10_000).factory == "Flat" and choose_spec(FLAT_MAX).exact
    mid = choose_spec(100_000)  # measured on real vectors: 64 probes, 512 candidates
    assert (mid.factory, mid.nprobe, mid.candidates) == ("IVF1024_HNSW32,SQ8", 64, 512)
    assert not choose_spec(FLAT_MAX + 1).exact
    big = choose_spec(5_000_000)
    assert big.factory.startswith("IVF") and "HNSW" in big.factory and not big.exact
    assert big.nprobe == int(big.factory[3:].split("_")[0]) // 6
    assert choose_spec(10, "IVF64_HNSW16,PQ16").factory == "IVF64_HNSW16,PQ16"
    assert normalise_factory("IDMap2,Flat") == "Flat" and IndexSpec("IDMap,Flat").exact


def test_global_slice_is_the_global_part():
    assert global_slice(encoder_spec().to_dict()["parts"], G * 3) == (0, G)
    assert global_slice([], 64) == (0, 64)
