"""The FAISS backend: versions as files under a folder (``faiss_store``), searched in process
(``faiss_loaded``), first stages built by ``faiss_build`` (GPU when there is one: ``faiss_gpu``).

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

from indexer.backends.base import CorruptIndex, Hits, NoIndex, Rows, SearchFilter, split_pointer
from indexer.backends.faiss_build import build_first_stage, nlist_of
from indexer.backends.faiss_loaded import LoadedIndex
from indexer.backends.faiss_store import IndexStore, new_version_name
from indexer.backends.locking import build_lock
from indexer.manifest import Manifest
from indexer.spec import IndexSpec, choose_spec, first_stage_of

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
        self._checked: dict[str, list[str]] = {}  # base -> its problems, found at first load
        self._refused: dict[str, str] = {}  # pointer -> why it is not served

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
        """The loaded version (default: the live one), kept until the pointer changes.

        A version is verified when it is loaded, with the checks ``check`` makes
        (``check_files`` on its base once per backend, ``check_deltas`` at each load); one
        that fails them or does not load is refused for the life of this backend, and one
        whose folder is gone is refused while it is gone: ``CorruptIndex``, never served."""
        pointer = version or self.current_version()
        if pointer is None:
            return None
        self._require_folder(pointer)
        view = self._view
        if view is None or view.version != pointer:
            with self._lock:
                if self._view is None or self._view.version != pointer:
                    self._view = self._load_verified(pointer)
                    log.info("loaded index %s (%d vectors)", pointer, self._view.count)
                view = self._view
        return view

    def _require_folder(self, pointer: str) -> None:
        """A version whose folder was deleted is refused even while its arrays are still
        mapped here: the next start could not load it."""
        base, _ = split_pointer(pointer)
        if not (self.store.versions / base / "manifest.json").is_file():
            raise CorruptIndex(f"index version {pointer} is missing: its folder "
                               f"versions/{base} was deleted or never completed")

    def _load_verified(self, pointer: str) -> LoadedIndex:
        if pointer in self._refused:
            raise CorruptIndex(self._refused[pointer])
        try:
            view = self.store.load(pointer, use_gpu=self.use_gpu)
            problems = self._base_problems(view) + check_deltas(view)
        except LOAD_ERRORS as exc:
            problems = [f"it cannot be loaded ({type(exc).__name__}: {exc})"]
        if problems:
            reason = f"index version {pointer} is corrupt: " + "; ".join(
                p.removeprefix("corrupt: ") for p in problems)
            self._refused[pointer] = reason
            log.error("%s; it is not served (`tbps index --check` repairs it)", reason)
            raise CorruptIndex(reason)
        return view

    def _base_problems(self, view: LoadedIndex) -> list[str]:
        """``check_files`` of a base, once per base and backend (bases never change)."""
        base, _ = split_pointer(view.version)
        if base not in self._checked:
            self._checked[base] = check_files(view)
        return self._checked[base]

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
        return check_files(view) + check_deltas(view)

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
    return problems + vector_problems(np.asarray(live.full[pick], np.float32), m.parts,
                                      "stored vectors")


def check_deltas(live: LoadedIndex) -> list[str]:
    """The rows added since the build: the manifest's dimension, finite, of the right norm."""
    vectors = live.deltas.vectors  # (M, D)
    if vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != live.manifest.dim):
        return [f"corrupt: added vectors are {vectors.shape}, not (M, {live.manifest.dim})"]
    return vector_problems(vectors[:NORM_SAMPLE], live.manifest.parts, "added vectors")


def vector_problems(sample: np.ndarray, parts: list[dict], what: str) -> list[str]:
    """(S, D) float32 rows: finite and of the norm the encoder's parts give them."""
    if not len(sample):
        return []
    if not np.isfinite(sample).all():
        return [f"corrupt: {what} hold NaN or infinite values"]
    expect = expected_norm(parts)
    norms = np.linalg.norm(sample, axis=1)
    if not np.allclose(norms, expect, atol=1e-2):
        return [f"corrupt: {what} are not of norm {expect:.3f}"]
    return []


def expected_norm(parts: list[dict]) -> float:
    """sqrt of the number of unit-normalised blocks (groups) of an exported vector."""
    groups = {p.get("group") or p.get("name") for p in parts}
    return float(np.sqrt(len(groups) or 1))
