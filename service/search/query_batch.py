"""Many queries' first step at once: one text-tower call, one index search per (index, k).

A ``Probe`` is what a search needs before it can rank: its query vector (the description
encoded, blended with the examples' vector of a search by example: ``service.search.query_vector``)
and its first index search (``k`` hits, over the allowed ids when a narrow filter passes them,
or with the filter pushed into an engine that stores camera and time). Queries
without an id list that share a live version (``IndexView.version``) and ``k`` are searched in one
``IndexView.search`` call of many query rows; each filtered one is searched alone (its own
allowed ids or engine filter). Results equal one-at-a-time searches: every backend answers
each query row independently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from indexer.backends import IndexView, SearchFilter
from models.encoder import Encoder
from service.search.query_vector import DEFAULT_TEXT_WEIGHT, blend


@dataclass(frozen=True, eq=False)
class Probe:
    live: IndexView
    text: str | None  # None: examples only
    k: int
    allowed_ids: np.ndarray | None = None  # None: search every live vector
    filter: SearchFilter | None = None  # pushed into an engine that filters (Milvus)
    examples: np.ndarray | None = None  # (1, D) the examples' query (or an image's vector)
    text_weight: float = DEFAULT_TEXT_WEIGHT


@dataclass(frozen=True)
class Probed:
    qvec: np.ndarray  # (1, D) the query vector searched
    scores: np.ndarray  # (1, k)
    ids: np.ndarray  # (1, k) crop ids, -1 padded


def _query_vector(encoder: Encoder, probe: Probe, text: np.ndarray | None) -> np.ndarray:
    """(1, D) the text's vector (1, D) as encoded, or blended with the probe's examples."""
    if probe.examples is None:
        return text  # type: ignore[return-value]
    return blend(encoder.spec, text, probe.examples, probe.text_weight)


def run_probes(encoder: Encoder, probes: list[Probe]) -> list[Probed]:
    """Encode every distinct description once, then search by (index, k) group."""
    texts = list(dict.fromkeys(p.text for p in probes if p.text is not None))
    row = {text: i for i, text in enumerate(texts)}
    encoded = encoder.encode_text(texts) if texts else None  # (T, D)
    qvecs = np.concatenate([_query_vector(encoder, p, None if p.text is None
                                          else encoded[row[p.text]][None])
                            for p in probes])  # (B, D)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for j, probe in enumerate(probes):
        # one pointer, one content (a backend's pointer changes on every publish, add and
        # remove), whichever view object of it a request holds (Milvus opens a new one each time)
        alone = probe.allowed_ids is not None or probe.filter is not None
        key = ("alone", j) if alone else (probe.live.version, probe.k)
        groups[key].append(j)
    out: list[Probed | None] = [None] * len(probes)
    for members in groups.values():
        first = probes[members[0]]
        scores, ids = first.live.search(qvecs[members], first.k, filter=first.filter,
                                        allowed_ids=first.allowed_ids)  # (G, k) each
        for r, j in enumerate(members):
            out[j] = Probed(qvecs[j : j + 1], scores[r : r + 1], ids[r : r + 1])
    return out  # type: ignore[return-value]
