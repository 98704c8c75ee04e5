"""Index specs: gallery size (or a FAISS factory string) in, a first-stage index out.

- "Flat": exact ``IndexFlatIP`` over the full vectors; the default up to ``FLAT_MAX``.
- anything else: a two-stage spec. The factory string builds an approximate inner-product index
  over the *global* slice of each vector (``EncoderSpec.parts`` with group "global"); its
  candidates are re-ranked exactly on the full stored vectors (see ``indexer.loaded``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from indexer import gpu
from indexer.manifest import DEFAULT_FACTORY, FirstStage, normalise_factory

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FACTORY", "FACTORY_PATTERN", "IndexSpec", "auto_nlist", "build_first_stage",
           "choose_spec", "factory_problem", "first_stage_of", "global_slice", "nlist_of",
           "normalise_factory"]

# Measured on real model vectors topped up to gallery sizes (bench/results/
# search_cpu_real_sizes.json, docs/results.md "Speed (issue 13)"): exact search took 1.3 ms
# p50 at 4.5k crops but 55 ms at 30k, where IVF1024_HNSW32,SQ8 took 9 ms at recall@10 0.988
FLAT_MAX = 20_000
REAL_MEASURED_MAX = 100_000  # up to here nprobe 64 / 512 candidates: recall@10 0.988-0.997
# what ``choose_spec`` takes: a factory string, optionally "full:"-prefixed (request schemas)
FACTORY_PATTERN = r"^(full:)?[A-Za-z0-9_,.]+$"
TRAIN_MAX = 131_072  # rows sampled to train a quantizer
TRAIN_NITER = 10  # k-means iterations: the exact re-rank absorbs a slightly coarser quantizer
ADD_CHUNK = 65_536
# largest number a factory string may hold (lists, links, codes): a larger one would have FAISS
# allocate gigabytes when the string is merely checked (auto_nlist stops at 65,536)
FACTORY_NUMBER_MAX = 1 << 18


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


def build_first_stage(full: np.ndarray, spec: IndexSpec, start: int, stop: int, *,
                      seed: int = 0) -> faiss.Index:
    """Train on a sample and fill an approximate index over ``full[:, start:stop]`` (rows
    become ids 0..N-1). ``full`` may be a float16 memmap; it is read chunk by chunk."""
    dim = stop - start
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = TRAIN_NITER
        gpu.use_gpu_for_training(index)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(full), min(len(full), TRAIN_MAX), replace=False))
        sample = np.asarray(full[pick, start:stop], dtype=np.float32)  # (T, G)
        log.info("training %s on %d of %d vectors", spec.factory, len(sample), len(full))
        index.train(sample)
    for lo in range(0, len(full), ADD_CHUNK):
        index.add(np.ascontiguousarray(full[lo : lo + ADD_CHUNK, start:stop], dtype=np.float32))
    return index


def first_stage_of(spec: IndexSpec, parts: list | tuple, dim: int,
                   nlist: int = 0) -> FirstStage | None:
    """The manifest's ``first_stage`` entry (None for exact search)."""
    if spec.exact:
        return None
    start, stop = global_slice(parts, dim) if spec.input == "global" else (0, dim)
    return FirstStage(**spec.to_dict(), start=start, stop=stop, nlist=nlist)


def factory_problem(factory: str, parts: list | tuple, dim: int) -> str | None:
    """Why FAISS cannot build the first stage ``factory`` names (a ``choose_spec`` string)
    over vectors of ``dim`` with these ``parts``, or None. It builds the empty index, untrained
    (milliseconds), so that a bad string is refused before any crop is encoded."""
    spec = choose_spec(0, factory)
    if spec.exact:
        return None
    big = [n for n in map(int, re.findall(r"\d+", spec.factory)) if n > FACTORY_NUMBER_MAX]
    if big:
        return f"{big[0]} in {spec.factory!r} is over {FACTORY_NUMBER_MAX}, the largest allowed"
    first = first_stage_of(spec, parts, dim)
    width = first.stop - first.start
    try:
        faiss.index_factory(width, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:  # FAISS: "Error in <function> at <file>:<line>: <reason>"
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", str(exc))
        return (f"{spec.factory!r} is not a FAISS index that can be built over the "
                f"{width}-dimensional {spec.input} vectors: {reason}")
    return None


def nlist_of(index: faiss.Index) -> int:
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 0
