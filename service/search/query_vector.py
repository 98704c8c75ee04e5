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

from models.blocks import blend as _blend
from models.blocks import blocks, example_query, unit_blocks
from models.encoder import EncoderSpec

DEFAULT_TEXT_WEIGHT = 0.5  # used when no calibration sidecar chose one on dev (tbps calibrate)
MAX_EXAMPLES = 10

__all__ = ["DEFAULT_TEXT_WEIGHT", "MAX_EXAMPLES", "blend", "blocks", "example_query",
           "unit_blocks"]


def blend(spec: EncoderSpec, text: np.ndarray | None, examples: np.ndarray | None,
          text_weight: float = DEFAULT_TEXT_WEIGHT) -> np.ndarray:
    """(1, D) text and/or (1, D) example query -> (1, D) query vector, unit per block
    (``models.blocks.blend``; the arithmetic lives in the models package so that
    ``tbps calibrate`` builds dev queries by the same rule)."""
    return _blend(spec, text, examples, text_weight)
