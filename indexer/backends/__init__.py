"""Index backends behind one interface (``indexer.backends.base.IndexBackend``).

A backend is registered by name with the ``module:Class`` that implements it, imported only
when it is created, so an engine's client library is needed only where that engine is used::

    backend = create_backend("faiss", root=Path("data/index"))

The class is called with the keyword options given to ``create_backend``; every backend takes
``root`` (its local work folder) and ignores nothing silently.
"""

from __future__ import annotations

import importlib
from typing import Any

from indexer.backends.base import (
    PAD_SCORE,
    BackendUnavailable,
    BuildBusy,
    CorruptIndex,
    Hits,
    IndexBackend,
    IndexView,
    NoIndex,
    Rows,
    SearchFilter,
)
from indexer.manifest import FirstStage, Manifest

__all__ = ["PAD_SCORE", "BackendUnavailable", "BuildBusy", "CorruptIndex", "FirstStage", "Hits",
           "IndexBackend", "IndexView", "Manifest", "NoIndex", "Rows", "SearchFilter",
           "available_backends", "create_backend", "register_backend"]

_REGISTRY: dict[str, str] = {
    "faiss": "indexer.backends.faiss_backend:FaissBackend",
    "milvus": "indexer.backends.milvus_backend:MilvusBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register (or replace) the ``"module:Class"`` that implements backend ``name``."""
    if ":" not in target:
        raise ValueError(f"backend target {target!r} is not 'module:Class'")
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(name: str, **options: Any) -> IndexBackend:
    """The backend registered as ``name``, made with ``options``; ``BackendUnavailable`` with
    the reason when it is unknown or its module cannot be imported."""
    target = _REGISTRY.get(name)
    if target is None:
        raise BackendUnavailable(f"unknown index backend {name!r}; known: "
                                 f"{', '.join(available_backends())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(f"index backend {name!r} is not available: {exc} "
                                 f"(module {module_name})") from exc
    return getattr(module, attr)(**options)
