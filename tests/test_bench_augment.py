"""bench.search_bench.augment: real vectors topped up to a gallery size for the spec bench."""

from __future__ import annotations

import numpy as np

from bench.search_bench import _parts_of, augment

SPEC = {"dim": 12, "parts": [{"name": "global", "group": "global", "start": 0, "stop": 4},
                             {"name": "s1", "group": "stripes", "start": 4, "stop": 8},
                             {"name": "s2", "group": "stripes", "start": 8, "stop": 12}]}


def _real(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    for a, b in _parts_of(SPEC):
        x[:, a:b] /= np.linalg.norm(x[:, a:b], axis=1, keepdims=True)
    return x


def test_real_rows_are_kept_and_added_rows_keep_part_norms_and_lie_near_real_ones(tmp_path):
    real = _real(50)
    augment(real, 400, SPEC, tmp_path / "a.npy")
    out = np.load(tmp_path / "a.npy").astype(np.float32)
    assert out.shape == (400, 12)
    np.testing.assert_allclose(out[:50], real, atol=1e-3)  # float16 storage
    for a, b in _parts_of(SPEC):
        np.testing.assert_allclose(np.linalg.norm(out[50:, a:b], axis=1), 1.0, atol=2e-3)
    nearest = (out[50:] @ real.T).max(axis=1)  # each added row sits close to a real one
    assert nearest.min() > 0.5 * len(_parts_of(SPEC)) and len(np.unique(out, axis=0)) == 400


def test_a_size_below_the_real_count_keeps_the_first_rows(tmp_path):
    real = _real(50)
    augment(real, 20, SPEC, tmp_path / "b.npy")
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), real[:20], atol=1e-3)
