"""The index backend interface: where vectors live and how they are searched.

Every backend keeps *versions*: a full build writes a new version beside the live one
(``build``), ``publish`` makes it live atomically, the previous one stays for ``rollback``.
``add`` and ``remove`` change the live version at once, as a new *generation* of it: the
pointer returned by ``current_version()`` changes on every publish, add and remove, so a
searcher that compares it with the view it holds knows when to reopen.

Search has the same two-stage semantics in every backend: exact specs score the full vectors;
approximate specs take candidates from an approximate index over the global part (or the
whole vector, a "full:" spec) and re-rank them exactly on the full vectors, so scores are
always the model's full inner product. Filters are exact: the result is the top k among the
rows that pass, never a post-filtered top k.

Two ways to filter, because engines differ:
- ``SearchFilter`` (conditions on per-crop attributes: camera, time, height ...;
  ``indexer.filters``): applied inside the engine by backends with ``filters_in_engine``
  (they store each row's attributes, given in ``Rows``; the manifest names them);
- ``allowed_ids``: an array of crop ids the caller computed (the service's catalog), applied
  by every backend (FAISS: an id selector).

Implementations: ``indexer.backends.faiss_backend.FaissBackend`` (files under a folder);
others register themselves in ``indexer.backends`` (see ``register_backend``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.filters import ATTRIBUTES, SearchFilter
from indexer.manifest import Manifest

__all__ = ["PAD_SCORE", "BackendUnavailable", "BuildBusy", "CorruptIndex", "Hits", "IndexBackend",
           "IndexView", "NoIndex", "Rows", "SearchFilter", "split_pointer"]

PAD_SCORE = np.float32(-np.finfo(np.float32).max)  # score of an id -1 padding slot


def split_pointer(pointer: str) -> tuple[str, int]:
    """A live pointer ``"<base>+<generation>"`` -> (base, generation); a bare base is
    generation 0 (every backend names its versions so)."""
    base, _, gen = pointer.partition("+")
    return base, int(gen or 0)


class NoIndex(FileNotFoundError):
    """No version is live (or the one asked for does not exist)."""


class CorruptIndex(NoIndex):
    """The version asked for is on record but not usable: its files are gone, do not load, or
    fail the checks made when it is opened (shapes, counts, finite vectors of the right
    norm). The message says which version and why."""


class BuildBusy(RuntimeError):
    """Another full build holds the build lock."""


class BackendUnavailable(RuntimeError):
    """The configured backend cannot be created (not installed, not reachable), or its server
    was lost after start-up (a call could not reach it; the service answers 503)."""


@dataclass(frozen=True, eq=False)
class Rows:
    """Vectors to store, one row per crop.

    ``vectors`` are the encoder's exported vectors (float32, or float16 when read back from
    storage), L2-normalised per part. ``attributes`` (name -> (N,) array, names from
    ``indexer.filters.ATTRIBUTES``: camera id, time, height ...) are for backends that filter
    inside the engine; others ignore them.
    """

    ids: np.ndarray  # (N,) int64 crop ids, unique
    vectors: np.ndarray  # (N, D) float32
    attributes: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (N,)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if np.ndim(self.ids) != 1 or np.ndim(self.vectors) != 2 or len(self.vectors) != n:
            raise ValueError(f"rows: ids {np.shape(self.ids)} and vectors "
                             f"{np.shape(self.vectors)} do not match")
        for name, value in self.attributes.items():
            if name not in ATTRIBUTES:
                raise ValueError(f"rows: unknown attribute {name!r}; known: "
                                 f"{', '.join(ATTRIBUTES)}")
            if np.shape(value) != (n,):
                raise ValueError(f"rows: {name} {np.shape(value)} does not match {n} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def empty(cls, dim: int) -> Rows:
        return cls(np.zeros(0, np.int64), np.zeros((0, dim), np.float32))

    def select(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` (N,) bool is True."""
        return Rows(self.ids[mask], self.vectors[mask],
                    {name: value[mask] for name, value in self.attributes.items()})


@dataclass(frozen=True, eq=False)
class Hits:
    """Search results, best first per query; unpacks as ``scores, ids = hits`` (and
    ``hits[0]``, ``hits[1]`` are the scores and the ids, as a pair would be)."""

    scores: np.ndarray  # (Q, k) float32, full inner products; PAD_SCORE where ids is -1
    ids: np.ndarray  # (Q, k) int64 crop ids, -1 padded when fewer than k rows pass
    version: str = ""  # the pointer searched

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.scores, self.ids))

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.scores, self.ids)[i]


@runtime_checkable
class IndexView(Protocol):
    """One version opened for reading: every call sees the same content."""

    version: str  # the pointer: "<base>" or "<base>+<generation>"

    @property
    def manifest(self) -> Manifest: ...

    @property
    def count(self) -> int:
        """Rows searchable in this version."""

    def live_ids(self) -> np.ndarray:
        """(count,) int64 every searchable crop id, sorted."""

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(n,) crop ids -> (n, D) float32 stored full vectors; KeyError for an unknown id."""

    def search(self, queries: np.ndarray, k: int, *, filter: SearchFilter | None = None,
               allowed_ids: np.ndarray | None = None) -> Hits:
        """(Q, D) float32 queries -> top k per query among the rows that pass ``filter`` and
        are in ``allowed_ids`` (when given). ``filter`` needs ``filters_in_engine``."""


@runtime_checkable
class IndexBackend(Protocol):
    """Versions of an index: build, publish, add, remove, search, rollback, check."""

    name: str  # "faiss", "milvus": the TBPS_INDEX_BACKEND value
    filters_in_engine: bool  # search applies SearchFilter itself (rows carry attributes)
    work_dir: Path  # local folder of the build lock
    builds_dir: Path  # local folder of resumable builds' shards (".building-<tag>" folders)

    def current_version(self) -> str | None:
        """The live pointer; it changes on every publish, add and remove."""

    def previous_version(self) -> str | None:
        """The pointer ``rollback`` would make live."""

    def manifest(self, version: str | None = None) -> Manifest:
        """The manifest of a version (default: the live one); ``NoIndex`` when none. It is
        what the version's build wrote: ``add`` and ``remove`` leave it (and its ``count``,
        the rows built) unchanged; ``open().count`` is the rows searchable now."""

    def build(self, batches: Iterable[Rows], *, total: int, encoder: dict[str, Any],
              factory: str | None = None) -> str:
        """Write a complete version of ``total`` rows, read once from ``batches``, beside the
        live one; returns its name (not live until ``publish``). ``encoder`` is the
        ``EncoderSpec.to_dict()`` that made the vectors; ``factory`` None lets the backend
        choose the spec for the size (exact when small)."""

    def publish(self, version: str, *, keep_previous: bool = False) -> None:
        """Make a built version live atomically; the old live one becomes the previous one
        (unless ``keep_previous``: a compaction of the same content)."""

    def add(self, rows: Rows) -> str:
        """Make these rows searchable in the live version at once (an id already present is
        replaced); returns the new pointer. ``NoIndex`` when nothing is live."""

    def remove(self, ids: np.ndarray) -> str | None:
        """Hide these crop ids from every search at once; returns the new pointer (None when
        nothing is live)."""

    def open(self, version: str | None = None) -> IndexView | None:
        """A view of a version (default: the live one; None when nothing is live);
        ``CorruptIndex`` when that version is unusable (files gone, not loading, or failing
        the checks a backend makes when it loads one)."""

    def search(self, queries: np.ndarray, k: int, *, filter: SearchFilter | None = None,
               allowed_ids: np.ndarray | None = None) -> Hits:
        """``open().search(...)`` on the live version; ``NoIndex`` when none."""

    def rollback(self) -> str:
        """Swap the live and the previous version; returns the pointer now live."""

    def check(self, version: str | None = None) -> list[str]:
        """Problems of a version with itself (counts, shapes, duplicate ids, vector norms);
        those that make it unusable start with "corrupt". Empty when it is sound."""

    def unfinished(self) -> list[str]:
        """Names of half-written versions a killed build left (``prune`` removes them)."""

    def prune(self) -> list[str]:
        """Delete versions other than the live and the previous one, and half-written ones;
        returns what was removed."""

    def lock(self) -> AbstractContextManager[None]:
        """The build lock: one full build (or compaction) at a time per index, across
        processes. Non-blocking: raises ``BuildBusy`` when held
        (``indexer.backends.locking.build_lock`` does this with a file in ``work_dir``)."""
