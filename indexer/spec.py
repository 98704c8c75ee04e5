"""Index specs: gallery size (or a FAISS factory string) in, the spec a backend builds.

- "Flat": exact search over the full vectors; the default up to ``FLAT_MAX``.
- anything else: a two-stage spec. The factory string names an approximate inner-product index
  over the *global* slice of each vector (``EncoderSpec.parts`` with group "global"); its
  candidates are re-ranked exactly on the full stored vectors. The FAISS backend builds it
  (``indexer.backends.faiss_build``); Milvus maps it to its own index (``milvus_spec``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from indexer.manifest import DEFAULT_FACTORY, FirstStage, normalise_factory

__all__ = ["DEFAULT_FACTORY", "FACTORY_PATTERN", "FLAT_MAX", "IndexSpec", "auto_nlist",
           "choose_spec", "first_stage_of", "global_slice", "normalise_factory"]
# Measured on real model vectors topped up to gallery sizes (bench/results/
# search_cpu_real_sizes.json, docs/results.md "Speed (issue 13)"): exact search took 1.3 ms
# p50 at 4.5k crops but 55 ms at 30k, where IVF1024_HNSW32,SQ8 took 9 ms at recall@10 0.988
FLAT_MAX = 20_000
REAL_MEASURED_MAX = 100_000  # up to here nprobe 64 / 512 candidates: recall@10 0.988-0.997
# what ``choose_spec`` takes: a factory string, optionally "full:"-prefixed (request schemas)
FACTORY_PATTERN = r"^(full:)?[A-Za-z0-9_,.]+$"


@dataclass(frozen=True)
class IndexSpec:
    """What is stored in the manifest to rebuild or search an index."""

    factory: str  # "Flat", or the first stage's FAISS factory string
    input: str = "global"  # what the first stage indexes: the global part, or the full vector
    nprobe: int = 128  # text queries sit off the image manifold: probe wide (bench/results)
    candidates: int = 256  # first-stage hits re-ranked on the full vectors

    @property
    def exact(self) -> bool:
        return normalise_factory(self.factory) == "Flat"

    @property
    def label(self) -> str:
        """The factory string as the CLI takes it ("full:" prefix for a full-vector stage)."""
        return self.factory if self.exact or self.input == "global" else f"full:{self.factory}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_spec(n: int, factory: str | None = None) -> IndexSpec:
    """The spec for a gallery of ``n`` vectors; ``factory`` overrides the choice.

    A "full:" prefix (e.g. "full:IVF2048_HNSW32,PQ128") makes the first stage index the whole
    vector instead of the global part: better candidates when the global part alone ranks
    poorly (see docs/results.md), at the price of longer codes.
    """
    if factory:
        factory = normalise_factory(factory)
        if factory.startswith("full:"):
            return IndexSpec(factory.removeprefix("full:"), input="full")
        return IndexSpec(factory)
    if n <= FLAT_MAX:
        return IndexSpec("Flat")
    nlist = auto_nlist(n)
    if n <= REAL_MEASURED_MAX:  # 1,024 lists; 32 probes / 256 candidates gave 0.966-0.979
        return IndexSpec(f"IVF{nlist}_HNSW32,SQ8", nprobe=64, candidates=512)
    codes = "SQ8" if n <= 20_000_000 else "PQ32"
    # text queries sit off the image manifold: probe a sixth of the lists (recall 0.95-0.97
    # at 1M in bench/results/search_cpu_synthetic*.json)
    return IndexSpec(f"IVF{nlist}_HNSW32,{codes}", nprobe=max(32, nlist // 6))


def auto_nlist(n: int) -> int:
    """About 2 sqrt(N) inverted lists, a power of two in [1024, 65536]."""
    return int(min(max(2 ** round(math.log2(2 * math.sqrt(max(n, 1)))), 1024), 65536))


def global_slice(parts: list[dict[str, Any]] | tuple, dim: int) -> tuple[int, int]:
    """[start, stop) of the global part (the first part of group "global", else the first)."""
    parts = [p if isinstance(p, dict) else asdict(p) for p in parts]
    if not parts:
        return 0, dim
    chosen = next((p for p in parts if p.get("group") == "global"), parts[0])
    return int(chosen["start"]), int(chosen["stop"])


def first_stage_of(spec: IndexSpec, parts: list | tuple, dim: int,
                   nlist: int = 0) -> FirstStage | None:
    """The manifest's ``first_stage`` entry (None for exact search)."""
    if spec.exact:
        return None
    start, stop = global_slice(parts, dim) if spec.input == "global" else (0, dim)
    return FirstStage(**spec.to_dict(), start=start, stop=stop, nlist=nlist)

