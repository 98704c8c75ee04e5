"""The FAISS first stage of a two-stage spec (``indexer.spec``): trained on a sample and
filled from the stored vectors; its candidates are re-ranked exactly on the full vectors (see
``indexer.backends.faiss_loaded``).
"""

from __future__ import annotations

import logging
import re

import faiss
import numpy as np

from indexer.backends import faiss_gpu as gpu
from indexer.spec import IndexSpec, choose_spec, first_stage_of

log = logging.getLogger(__name__)

__all__ = ["build_first_stage", "factory_problem", "nlist_of"]

TRAIN_MAX = 131_072  # rows sampled to train a quantizer
TRAIN_NITER = 10  # k-means iterations: the exact re-rank absorbs a slightly coarser quantizer
ADD_CHUNK = 65_536
# largest number a factory string may hold (lists, links, codes): a larger one would have FAISS
# allocate gigabytes when the string is merely checked (auto_nlist stops at 65,536)
FACTORY_NUMBER_MAX = 1 << 18


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
