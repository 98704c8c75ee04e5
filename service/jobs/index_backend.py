"""The index backend the settings name (``TBPS_INDEX_BACKEND``), for jobs and for search."""

from __future__ import annotations

from indexer.backends import BackendUnavailable, IndexBackend, create_backend
from indexer.spec import FLAT_MAX
from models.encoder import EncoderSpec
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


def index_spec_problem(settings: Settings, factory: str, spec: EncoderSpec) -> str | None:
    """Why the configured backend cannot build an index of ``factory`` for the vectors of
    the encoder ``spec`` describes, or None: checked when a reindex is asked for, not after
    the worker has encoded the gallery."""
    if settings.index_backend == "milvus":
        from indexer.backends.milvus_spec import milvus_first_stage

        try:
            milvus_first_stage(FLAT_MAX + 1, factory, list(spec.parts), spec.dim)
        except ValueError as exc:
            return str(exc)
        return None
    from indexer.backends.faiss_build import factory_problem

    return factory_problem(factory, spec.parts, spec.dim)
