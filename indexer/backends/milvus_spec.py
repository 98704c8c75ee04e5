"""Milvus index specs and filter expressions: plain functions, no server needed.

A spec is named like the FAISS one (``indexer.spec.choose_spec``) so a manifest reads the same
in both backends: "Flat" is exact search over the full vectors; anything else is a first stage
over the global part ("full:" prefix: over the whole vector) whose candidates are re-ranked on
the full vectors. Milvus index types are given by name (``IVF_SQ8``, ``IVF_FLAT``, ``IVF_PQ``,
``HNSW``), optionally with ``nlist`` (``IVF_SQ8,nlist=2048``); a FAISS factory string is read as
the nearest Milvus type (``IVF2048_HNSW32,SQ8`` -> ``IVF_SQ8`` with nlist 2048).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from indexer.filters import UNKNOWN_TIME, SearchFilter
from indexer.manifest import FirstStage
from indexer.spec import FLAT_MAX, auto_nlist, global_slice, normalise_factory

__all__ = ["CANDIDATES", "UNKNOWN_TIME", "filter_expression", "index_params",
           "milvus_first_stage", "milvus_index_type", "search_params"]
CANDIDATES = 256  # first-stage rows re-ranked per query, as the FAISS backend
HNSW_BUILD = {"M": 32, "efConstruction": 200}
MILVUS_TYPES = ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW")


def milvus_first_stage(n: int, factory: str | None, parts: list[dict[str, Any]],
                       dim: int) -> FirstStage | None:
    """The first stage for ``n`` rows (None: exact search), chosen as ``choose_spec`` does:
    exact up to ``FLAT_MAX``, else IVF_SQ8 with about 2 sqrt(N) lists, probing a sixth."""
    name = normalise_factory(factory) if factory else ("Flat" if n <= FLAT_MAX else "IVF_SQ8")
    full = name.startswith("full:")
    name = name.removeprefix("full:")
    if name.upper() == "FLAT":
        return None
    index_type, nlist = milvus_index_type(name, n)
    start, stop = (0, dim) if full else global_slice(parts, dim)
    nprobe = max(32, nlist // 6) if nlist else 0
    return FirstStage(factory=index_type, input="full" if full else "global", nprobe=nprobe,
                      candidates=CANDIDATES, start=start, stop=stop, nlist=nlist)


def milvus_index_type(name: str, n: int) -> tuple[str, int]:
    """(Milvus index type, nlist) for a spec name; ValueError for one Milvus has no match for."""
    head, _, options = name.partition(",")
    upper = head.upper()
    if upper in MILVUS_TYPES:
        match = re.search(r"nlist=(\d+)", options)
        nlist = int(match.group(1)) if match else auto_nlist(n)
        return upper, 0 if upper == "HNSW" else nlist
    faiss_ivf = re.match(r"IVF(\d+)", head)
    if faiss_ivf:
        codes = "IVF_SQ8" if "SQ8" in options else "IVF_PQ" if "PQ" in options else "IVF_FLAT"
        return codes, int(faiss_ivf.group(1))
    if head.startswith("HNSW"):
        return "HNSW", 0
    raise ValueError(f"no Milvus index for spec {name!r}; use one of {', '.join(MILVUS_TYPES)}"
                     " or Flat")


def index_params(stage: FirstStage | None) -> dict[str, Any]:
    """``index_type`` and build ``params`` for the collection a stage searches."""
    if stage is None:
        return {"index_type": "FLAT", "params": {}}
    if stage.factory == "HNSW":
        return {"index_type": "HNSW", "params": dict(HNSW_BUILD)}
    params: dict[str, Any] = {"nlist": stage.nlist}
    if stage.factory == "IVF_PQ":
        params |= {"m": _pq_m(stage.stop - stage.start), "nbits": 8}
    return {"index_type": stage.factory, "params": params}


def search_params(stage: FirstStage | None, limit: int) -> dict[str, Any]:
    if stage is None:
        return {"metric_type": "IP", "params": {}}
    if stage.factory == "HNSW":
        return {"metric_type": "IP", "params": {"ef": max(limit, 64)}}
    return {"metric_type": "IP", "params": {"nprobe": stage.nprobe}}


def _pq_m(dim: int) -> int:
    """Sub-quantizers for IVF_PQ: 8 dimensions each (the dimension must divide)."""
    return max(1, dim // 8)


def filter_expression(flt: SearchFilter | None, allowed_ids: np.ndarray | None) -> str | None:
    """The Milvus boolean expression for a filter ("" when none); None when no row can pass
    (an empty set or id list), which Milvus would reject as an expression."""
    terms: list[str] = []
    if flt is not None:
        expr = flt.expression()
        if expr is None:
            return None
        terms += [expr] if expr else []
    if allowed_ids is not None:
        if len(allowed_ids) == 0:
            return None
        terms.append(f"id in {np.asarray(allowed_ids, np.int64).tolist()}")
    return " and ".join(terms)
