"""The index backend the settings name (``TBPS_INDEX_BACKEND``), for jobs and for search."""

from __future__ import annotations

from indexer.backends import IndexBackend, create_backend
from service.config import Settings


def backend_from_settings(settings: Settings, *, for_search: bool = False) -> IndexBackend:
    """The configured backend over ``settings.resolved_index_dir``. ``for_search``: the FAISS
    backend may clone its indexes to a GPU (jobs only write and read ids: CPU)."""
    root = settings.resolved_index_dir
    if settings.index_backend == "faiss":
        return create_backend("faiss", root=root, use_gpu=for_search)
    return create_backend(settings.index_backend, root=root)
