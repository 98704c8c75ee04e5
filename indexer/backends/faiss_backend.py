"""The FAISS backend: versions as files under a folder (``indexer.store``), searched in process
(``indexer.loaded``), first stages built by ``indexer.build``.

Camera and time filters are not stored with the vectors: callers pass the crop ids that pass
(``allowed_ids``, from the service's catalog), applied exactly with an id selector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.backends.base import Hits, NoIndex, Rows, SearchFilter
from indexer.backends.locking import build_lock
from indexer.build import IndexSpec, build_first_stage, choose_spec, first_stage_of, nlist_of
from indexer.loaded import LoadedIndex
from indexer.manifest import Manifest
from indexer.store import IndexStore, new_version_name

log = logging.getLogger(__name__)

NORM_SAMPLE = 2000  # stored vectors whose norm ``check`` verifies
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


class FaissBackend:
    """``IndexBackend`` over an ``IndexStore`` folder."""

    name = "faiss"
    filters_in_engine = False

    def __init__(self, root: Path, *, use_gpu: bool = True) -> None:
        self.store = IndexStore(Path(root))
        self.use_gpu = use_gpu
        self.work_dir = self.store.root
        self.builds_dir = self.store.versions
        self._view: LoadedIndex | None = None
        self._lock = threading.Lock()

    # ---- versions ----
    def current_version(self) -> str | None:
        return self.store.current_version()

    def previous_version(self) -> str | None:
        return self.store.previous_version()

    def manifest(self, version: str | None = None) -> Manifest:
        version = version or self.current_version()
        if version is None:
            raise NoIndex("no index has been published")
        return self.store.manifest(version)

    def build(self, batches: Iterable[Rows], *, total: int, encoder: dict[str, Any],
              factory: str | None = None) -> str:
        version = new_version_name()
        staging = self.store.staging_dir(version)
        full = write_rows(staging, batches, total, int(encoder["dim"]))
        manifest = write_first_stage(staging, full, choose_spec(total, factory), encoder)
        return self.store.commit_staging(staging, version, manifest)

    def publish(self, version: str, *, keep_previous: bool = False) -> None:
        self.store.publish(version, keep_previous=keep_previous)

    def rollback(self) -> str:
        return self.store.rollback()

    # ---- incremental ----
    def add(self, rows: Rows) -> str:
        return self.store.add_delta(rows.ids, rows.vectors, np.zeros(0, np.int64))

    def remove(self, ids: np.ndarray) -> str | None:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        current = self.current_version()
        if current is None or not len(ids):
            return current
        dim = self.store.manifest(current).dim
        return self.store.add_delta(np.zeros(0, np.int64), np.zeros((0, dim), np.float16), ids)

    # ---- reading ----
    def open(self, version: str | None = None) -> LoadedIndex | None:
        """The loaded version (default: the live one), kept until the pointer changes."""
        pointer = version or self.current_version()
        if pointer is None:
            return None
        view = self._view
        if view is None or view.version != pointer:
            with self._lock:
                if self._view is None or self._view.version != pointer:
                    self._view = self.store.load(pointer, use_gpu=self.use_gpu)
                    log.info("loaded index %s (%d vectors)", pointer, self._view.count)
                view = self._view
        return view

    def search(self, queries: np.ndarray, k: int, *, filter: SearchFilter | None = None,
               allowed_ids: np.ndarray | None = None) -> Hits:
        view = self.open()
        if view is None:
            raise NoIndex("no index has been published")
        return view.search(queries, k, allowed_ids, filter=filter)

    # ---- housekeeping ----
    def check(self, version: str | None = None) -> list[str]:
        version = version or self.current_version()
        if version is None:
            raise NoIndex("no index has been published")
        try:
            view = self.store.load(version, use_gpu=False)
        except LOAD_ERRORS as exc:
            return [f"corrupt: index {version} cannot be loaded: {exc}"]
        return check_files(view)

    def unfinished(self) -> list[str]:
        folder = self.store.versions
        return sorted(p.name for p in folder.glob(".staging-*")) if folder.exists() else []

    def prune(self) -> list[str]:
        return self.store.prune()

    def lock(self) -> AbstractContextManager[None]:
        return build_lock(self.work_dir)


def write_rows(folder: Path, batches: Iterable[Rows], total: int, dim: int) -> np.ndarray:
    """``ids.npy`` (N,) and ``vectors.npy`` (N, D) float16 from ``total`` rows in batches;
    returns the vectors as a memmap. Refuses duplicate ids and a wrong total."""
    ids = np.empty(total, np.int64)
    out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float16,
                                    shape=(total, dim))
    row = 0
    for rows in batches:
        if row + len(rows) > total or rows.dim != dim:
            raise ValueError(f"rows of dim {rows.dim} overflow {total}x{dim} at row {row}")
        ids[row : row + len(rows)] = rows.ids
        out[row : row + len(rows)] = rows.vectors
        row += len(rows)
    if row != total:
        raise ValueError(f"{row} rows given for a version of {total}")
    if len(np.unique(ids)) != total:
        raise ValueError("crop ids must be unique")
    out.flush()
    np.save(folder / "ids.npy", ids)
    return out


def write_first_stage(staging: Path, full: np.ndarray, spec: IndexSpec,
                      encoder: dict[str, Any]) -> Manifest:
    """Build the first stage of a two-stage spec into ``staging`` (nothing for an exact one);
    returns the version's manifest. ``full`` (N, D) may be a float16 memmap."""
    first = first_stage_of(spec, encoder.get("parts", ()), full.shape[1])
    if first is not None:
        index = build_first_stage(full, spec, first.start, first.stop)
        first = replace(first, nlist=nlist_of(index))
        faiss.write_index(index, str(staging / "first_stage.faiss"))
    return Manifest.new(encoder=encoder, count=len(full), dim=full.shape[1], factory=spec.label,
                        first_stage=first)


def check_files(live: LoadedIndex) -> list[str]:
    """Counts, shapes, unique ids, first stage size, and vector norms on a sample."""
    problems, m, n = [], live.manifest, len(live.ids)
    if m.count != n or live.full.shape != (n, m.dim):
        problems.append(f"corrupt: manifest says {m.count}x{m.dim}, "
                        f"files hold {live.full.shape} and {n} ids")
    if len(np.unique(live.ids)) != n:
        problems.append("corrupt: duplicate crop ids in the index")
    if live.first_stage is not None and live.first_stage.ntotal != n:
        problems.append(f"corrupt: first stage holds {live.first_stage.ntotal} of {n}")
    pick = np.linspace(0, n - 1, min(n, NORM_SAMPLE)).astype(np.int64) if n else []
    norms = np.linalg.norm(np.asarray(live.full[pick], np.float32), axis=1)
    expect = expected_norm(m.parts)
    if len(norms) and not np.allclose(norms, expect, atol=1e-2):
        problems.append(f"corrupt: stored vectors are not of norm {expect:.3f}")
    return problems


def expected_norm(parts: list[dict]) -> float:
    """sqrt of the number of unit-normalised blocks (groups) of an exported vector."""
    groups = {p.get("group") or p.get("name") for p in parts}
    return float(np.sqrt(len(groups) or 1))
