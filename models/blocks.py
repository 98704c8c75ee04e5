"""Per-block arithmetic on exported vectors: the rule a search-by-example query is built by.

An exported vector is unit-normalised per block (``EncoderSpec`` parts grouped by ``group``:
the global feature, the stripes together), so the inner product of two vectors is the sum of
per-block cosines. The service builds its example and blended queries with these functions
(``service.search.query_vector`` states the rule), and ``models.calibration`` scores dev
queries with the same ones, so that a calibrated number means the served score.
"""

from __future__ import annotations

import numpy as np

from models.encoder import EncoderSpec


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
          text_weight: float) -> np.ndarray:
    """(Q, D) text and/or (Q, D) example queries -> (Q, D) query vectors, unit per block:
    ``text_weight * text + (1 - text_weight) * examples``, each unit per block first."""
    if examples is None:
        if text is None:
            raise ValueError("a query needs a description, examples or both")
        return np.asarray(text, dtype=np.float32)
    if text is None:
        return unit_blocks(spec, examples)
    mixed = (text_weight * unit_blocks(spec, text)
             + (1.0 - text_weight) * unit_blocks(spec, examples))  # (Q, D)
    return unit_blocks(spec, mixed)
