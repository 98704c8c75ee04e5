"""The index backend the settings name (``TBPS_INDEX_BACKEND``), for jobs and for search."""

from __future__ import annotations

from indexer.backends import BackendUnavailable, IndexBackend, create_backend
from service.config import Settings


def backend_from_settings(settings: Settings, *, for_search: bool = False) -> IndexBackend:
    """The configured backend over ``settings.resolved_index_dir``. ``for_search``: the FAISS
    backend may clone its indexes to a GPU (jobs only write and read ids: CPU). Milvus:
    ``BackendUnavailable`` naming TBPS_MILVUS_URI when the server cannot be reached."""
    root = settings.resolved_index_dir
    if settings.index_backend == "faiss":
        return create_backend("faiss", root=root, use_gpu=for_search)
    try:
        return create_backend("milvus", root=root, uri=settings.milvus_uri,
                              token=settings.milvus_token, prefix=settings.milvus_prefix,
                              timeout=settings.milvus_timeout,
                              read_consistency=settings.milvus_consistency)
    except BackendUnavailable as exc:
        raise BackendUnavailable(f"TBPS_INDEX_BACKEND=milvus: {exc}; check TBPS_MILVUS_URI="
                                 f"{settings.milvus_uri}") from exc
