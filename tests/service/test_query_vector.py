"""The query rule of a search by example (service.search.query_vector), on VGSG-shaped vectors: a
global part and a local block of two stripes, each unit-normalised."""

from __future__ import annotations

import numpy as np
import pytest

from models.encoder import EncoderSpec, Part
from service.search.query_vector import blend, blocks, example_query, unit_blocks
from tests.indexer.backend_data import DIM, GLOBAL, STRIPE, make_rows, queries

SPEC = EncoderSpec("synthetic", DIM, "c0ffee", (8, 4), (0.5,) * 3, (0.5,) * 3, parts=(
    Part("global", 0, GLOBAL, "global"), Part("stripe_1", GLOBAL, GLOBAL + STRIPE, "local"),
    Part("stripe_2", GLOBAL + STRIPE, DIM, "local")))


def block_norms(x: np.ndarray) -> np.ndarray:
    return np.stack([np.linalg.norm(x[:, a:b], axis=1) for a, b in blocks(SPEC)], axis=1)


def test_blocks_join_the_parts_of_one_group():
    assert blocks(SPEC) == [(0, GLOBAL), (GLOBAL, DIM)]
    plain = EncoderSpec("plain", 8, "x", (8, 4), (0.5,) * 3, (0.5,) * 3)
    assert blocks(plain) == [(0, 8)]


def test_examples_are_averaged_per_block_and_renormalised():
    rows = make_rows(3)
    scaled = rows.vectors * np.array([[2.0], [0.5], [1.0]], np.float32)  # drifted norms
    query = example_query(SPEC, scaled)  # (1, D)
    np.testing.assert_allclose(block_norms(query), 1.0, atol=1e-6)
    mean = rows.vectors.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(query, unit_blocks(SPEC, mean), atol=1e-6)
    np.testing.assert_allclose(example_query(SPEC, rows.vectors[:1]), rows.vectors[:1], atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_blend_is_the_weighted_sum_of_unit_sources_renormalised(weight):
    text, examples = queries(1, seed=1), queries(1, seed=2)
    query = blend(SPEC, text, examples, weight)
    np.testing.assert_allclose(block_norms(query), 1.0, atol=1e-6)
    want = unit_blocks(SPEC, weight * text + (1 - weight) * examples)
    np.testing.assert_allclose(query, want, atol=1e-6)
    if weight in (0.0, 1.0):  # one source alone
        np.testing.assert_allclose(query, text if weight else examples, atol=1e-6)
    np.testing.assert_allclose(blend(SPEC, text, None), text)
    np.testing.assert_allclose(blend(SPEC, None, examples), examples, atol=1e-6)
    with pytest.raises(ValueError, match="description, examples or both"):
        blend(SPEC, None, None)
