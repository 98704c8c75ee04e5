"""The query vector of a search by example: stored example vectors, optionally with a text.

The rule (README, "Search by example"), per unit block of the exported vector (``EncoderSpec``
parts grouped by ``group``: the global feature, the stripes together):

1. each source is unit-normalised per block, as the encoder exports it (stored vectors may be
   float16 and drift a little);
2. the examples are averaged, then renormalised per block;
3. with a description: ``text_weight * text + (1 - text_weight) * examples``, renormalised per
   block.

So the query is always a vector the index can score like a text query: its inner product with a
crop is the sum of per-block cosines, at most ``spec.norm ** 2``.
"""

from __future__ import annotations

import numpy as np

from models.encoder import EncoderSpec

DEFAULT_TEXT_WEIGHT = 0.5  # not yet chosen on dev: see the README
MAX_EXAMPLES = 10


def blocks(spec: EncoderSpec) -> list[tuple[int, int]]:
    """[start, stop) of each unit-normalised block (parts of one group form one block)."""
    spans: dict[str, list[int]] = {}
    for part in spec.parts:
        span = spans.setdefault(part.group or part.name, [part.start, part.stop])
        span[0], span[1] = min(span[0], part.start), max(span[1], part.stop)
    return [tuple(s) for s in spans.values()] or [(0, spec.dim)]  # type: ignore[misc]


def unit_blocks(spec: EncoderSpec, vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32 with each block L2-normalised (a zero block stays zero)."""
    out = np.asarray(vectors, dtype=np.float32).copy()
    for start, stop in blocks(spec):
        norm = np.linalg.norm(out[:, start:stop], axis=1, keepdims=True)  # (N, 1)
        out[:, start:stop] /= np.maximum(norm, 1e-12)
    return out


def example_query(spec: EncoderSpec, examples: np.ndarray) -> np.ndarray:
    """(E, D) stored example vectors -> (1, D) their per-block mean, unit per block."""
    mean = unit_blocks(spec, examples).mean(axis=0, keepdims=True)  # (1, D)
    return unit_blocks(spec, mean)


def blend(spec: EncoderSpec, text: np.ndarray | None, examples: np.ndarray | None,
          text_weight: float = DEFAULT_TEXT_WEIGHT) -> np.ndarray:
    """(1, D) text and/or (1, D) example query -> (1, D) query vector, unit per block."""
    if examples is None:
        if text is None:
            raise ValueError("a query needs a description, examples or both")
        return np.asarray(text, dtype=np.float32)
    if text is None:
        return unit_blocks(spec, examples)
    mixed = (text_weight * unit_blocks(spec, text)
             + (1.0 - text_weight) * unit_blocks(spec, examples))  # (1, D)
    return unit_blocks(spec, mixed)
