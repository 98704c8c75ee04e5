"""faiss-gpu when it is installed and a GPU is visible; everything works without it."""

from __future__ import annotations

import logging
from functools import lru_cache

import faiss

log = logging.getLogger(__name__)


def limit_threads(n: int) -> None:
    """Threads torch and FAISS may use in this process."""
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


@lru_cache(maxsize=1)
def gpu_count() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except RuntimeError:  # driver present but unusable
        return 0


@lru_cache(maxsize=1)
def _resources():
    return faiss.StandardGpuResources()


def maybe_to_gpu(index: faiss.Index | None) -> faiss.Index | None:
    """Move an index to GPU 0 when possible (flat and IVF-PQ/SQ; an HNSW quantizer stays on
    the CPU side, which faiss handles); otherwise return it unchanged."""
    if index is None or not gpu_count():
        return index
    try:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        options.allowCpuCoarseQuantizer = True
        return faiss.index_cpu_to_gpu(_resources(), 0, index, options)
    except (RuntimeError, AttributeError) as exc:
        log.warning("keeping the index on the CPU: %s", exc)
        return index


def use_gpu_for_training(index: faiss.Index) -> None:
    """Run the k-means of an IVF index on the GPU (the documented clustering_index trick)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not gpu_count():
        return
    flat = faiss.GpuIndexFlatL2(_resources(), ivf.d)
    ivf.clustering_index = flat
    log.info("training the coarse quantizer on the GPU")
