"""A loaded index version: base arrays (memory-mapped), deltas applied, exact or two-stage search.

Search of the base part:
- exact spec ("Flat"): ``IndexFlatIP`` over the full vectors, scores are final;
- two-stage spec: the approximate first stage over the global slice returns ``candidates``
  rows, re-ranked exactly on the full float16 vectors (the model's full inner product).
Rows added since the build (deltas) are searched exactly; deleted rows (tombstones) are
excluded with an ID selector, so results are the top k among the live, allowed ids.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import torch

from indexer.backends import faiss_gpu as gpu
from indexer.backends.base import PAD_SCORE, Hits, SearchFilter
from indexer.manifest import FirstStage, Manifest

log = logging.getLogger(__name__)

EXACT_SUBSET_MAX = 20_000  # allowed sets up to this size are searched exactly, row by row


@dataclass
class Deltas:
    """Rows added after the build (exact search) and base rows hidden by later generations."""

    ids: np.ndarray  # (M,) int64
    vectors: np.ndarray  # (M, D) float32
    hidden: np.ndarray  # (K,) int64 crop ids whose base row is hidden (deleted or replaced)


def read_deltas(folder: Path, gen: int, dim: int) -> Deltas:
    """Apply generations 1..gen in order: later adds replace, later removes delete."""
    added: dict[int, np.ndarray] = {}
    hidden: set[int] = set()
    for g in range(1, gen + 1):
        path = folder / "deltas" / f"{g:06d}"
        ids = np.load(path / "added_ids.npy")
        vecs = np.load(path / "added_vectors.npy")
        for cid, vec in zip(ids.tolist(), vecs, strict=True):
            added[cid] = vec
        for cid in np.load(path / "removed_ids.npy").tolist():
            added.pop(cid, None)
        hidden.update(ids.tolist())
        hidden.update(np.load(path / "removed_ids.npy").tolist())
    ids = np.fromiter(added, dtype=np.int64, count=len(added))
    vectors = (np.stack(list(added.values())).astype(np.float32) if added
               else np.zeros((0, dim), np.float32))
    return Deltas(ids, vectors, np.fromiter(hidden, dtype=np.int64, count=len(hidden)))


class Base:
    """The immutable part of a version: ids, memory-mapped full vectors, first stage.

    Shared by every generation of the version loaded in this process (see ``load_base``), so
    publishing adds or deletes does not rebuild an index in the searchers.
    """

    def __init__(self, folder: Path, use_gpu: bool = True) -> None:
        self.folder = folder
        self.manifest = Manifest.read(folder / "manifest.json")
        if (folder / "vectors.npy").exists():
            self.ids = np.load(folder / "ids.npy")  # (N,) int64
            self.full = np.load(folder / "vectors.npy", mmap_mode="r")  # (N, D) float16
        else:
            self.ids, self.full = _read_legacy(folder)
            self.manifest = self.manifest.replace(factory="Flat", first_stage=None)
        self.order = np.argsort(self.ids, kind="stable")
        self.use_gpu = use_gpu
        self.first_stage = self.first_stage_gpu = None
        if self.manifest.first_stage is not None:
            self.first_stage = faiss.read_index(str(folder / "first_stage.faiss"))
            _tune(self.first_stage, self.manifest.first_stage)
            self.first_stage_gpu = gpu.maybe_to_gpu(self.first_stage) if use_gpu else None
        self._flat: faiss.Index | None = None
        self._flat_gpu: faiss.Index | None = None
        self._lock = threading.Lock()

    def flat(self, filtered: bool = False) -> faiss.Index:
        """The exact index of a Flat spec, built from the stored vectors on first use; the GPU
        clone (faiss-gpu) serves unfiltered searches, ID selectors need the CPU one."""
        with self._lock:
            if self._flat is None:
                self._flat = flat_index(self.full)
                if self.use_gpu:
                    self._flat_gpu = gpu.maybe_to_gpu(self._flat)
            if filtered or self._flat_gpu is self._flat:
                return self._flat
            return self._flat_gpu or self._flat

    def stage_index(self, filtered: bool) -> faiss.Index:
        """The first stage to search: the GPU clone when there is one and no ID selector."""
        if filtered or self.first_stage_gpu is None:
            return self.first_stage
        return self.first_stage_gpu

    def rows_of(self, crop_ids: np.ndarray) -> np.ndarray:
        """Rows of those ``crop_ids`` present in the base."""
        crop_ids = np.asarray(crop_ids, dtype=np.int64)
        if not len(self.ids) or not len(crop_ids):
            return np.zeros(0, np.int64)
        pos = np.searchsorted(self.ids, crop_ids, sorter=self.order)
        rows = self.order[np.minimum(pos, len(self.ids) - 1)]
        return rows[self.ids[rows] == crop_ids]


def _read_legacy(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A version written before float16 shards (one ``IDMap2,Flat`` index.faiss): read its ids
    and vectors so it keeps serving until the next full build replaces it."""
    raw = faiss.read_index(str(folder / "index.faiss"))  # owns the memory: keep it referenced
    index = faiss.downcast_index(raw)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    full = inner.reconstruct_n(0, inner.ntotal).astype(np.float16)  # (N, D)
    del inner, index, raw
    log.warning("index %s has the old single-file format: run `tbps index --full`", folder.name)
    return ids, full


_BASES: dict[tuple[str, bool], Base] = {}
_BASES_LOCK = threading.Lock()
BASES_KEPT = 2  # the live base and the one before it, while a swap is in flight


def load_base(folder: Path, use_gpu: bool = True) -> Base:
    key = (str(Path(folder).resolve()), use_gpu)
    with _BASES_LOCK:
        base = _BASES.get(key)
        if base is None:
            base = _BASES[key] = Base(Path(folder), use_gpu)
            while len(_BASES) > BASES_KEPT:
                _BASES.pop(next(iter(_BASES)))
        return base


@dataclass
class LoadedIndex:
    version: str  # the pointer: "<base>" or "<base>+<gen>"
    base: Base
    deltas: Deltas
    alive: np.ndarray = field(init=False)  # (N,) bool: base row not hidden by a delta
    _not_dead: faiss.IDSelector | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.alive = np.ones(len(self.base.ids), dtype=bool)
        self.alive[self.base.rows_of(self.deltas.hidden)] = False

    @property
    def manifest(self) -> Manifest:
        return self.base.manifest

    @property
    def ids(self) -> np.ndarray:
        return self.base.ids

    @property
    def full(self) -> np.ndarray:
        return self.base.full

    @property
    def first_stage(self) -> faiss.Index | None:
        return self.base.first_stage

    @property
    def exact(self) -> bool:
        return self.base.first_stage is None

    # ---- sizes and ids ----
    @property
    def dim(self) -> int:
        return int(self.manifest.dim)

    @property
    def count(self) -> int:
        """Live vectors: base rows not hidden plus rows added since the build."""
        return int(self.alive.sum()) + len(self.deltas.ids)

    def live_ids(self) -> np.ndarray:
        """(count,) every crop id searchable in this version, sorted."""
        return np.sort(np.concatenate([self.ids[self.alive], self.deltas.ids]))

    def rows_of(self, crop_ids: np.ndarray) -> np.ndarray:
        """Base rows of those ``crop_ids`` present in the base (alive or not)."""
        return self.base.rows_of(crop_ids)

    def vectors(self, crop_ids: np.ndarray) -> np.ndarray:
        """(n,) crop ids -> (n, D) float32 stored full vectors; KeyError for unknown ids."""
        crop_ids = np.asarray(crop_ids, dtype=np.int64)
        out = np.empty((len(crop_ids), self.dim), np.float32)
        delta_row = {cid: i for i, cid in enumerate(self.deltas.ids.tolist())}
        for i, cid in enumerate(crop_ids.tolist()):
            if cid in delta_row:
                out[i] = self.deltas.vectors[delta_row[cid]]
                continue
            rows = self.rows_of(np.array([cid]))
            if not len(rows) or not self.alive[rows[0]]:
                raise KeyError(f"crop {cid} is not in index {self.version}")
            out[i] = self.full[rows[0]]
        return out

    # ---- search ----
    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, *,
               filter: SearchFilter | None = None) -> Hits:
        """(Q, D) queries -> (Q, k) scores and crop ids, -1 padded (score -FLT_MAX).

        ``allowed_ids`` restricts the search to those crop ids (exact filtering: the top k
        among the allowed, not a post-filtered top k). Scores are the full inner product.
        Camera and time filters are not stored here: the caller turns them into ``allowed_ids``.
        """
        if filter is not None and not filter.empty:
            raise ValueError("the FAISS backend filters by allowed_ids only: turn camera and "
                             "time filters into crop ids first")
        k = max(1, int(k))
        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
        rows = None if allowed_ids is None else self._allowed_rows(allowed_ids)
        base_s, base_i = self._search_base(queries, k, rows)  # (Q, k) each
        delta_s, delta_i = self._search_deltas(queries, k, allowed_ids)
        scores, ids = _merge_top_k(np.hstack([base_s, delta_s]), np.hstack([base_i, delta_i]), k)
        return Hits(scores, ids, self.version)

    def retune(self, *, nprobe: int, candidates: int) -> None:
        """Search this version's first stage with another nprobe / candidate count (benches)."""
        stage = replace(self.manifest.first_stage, nprobe=nprobe, candidates=candidates)
        self.base.manifest = self.manifest.replace(first_stage=stage)

    def _allowed_rows(self, allowed_ids: np.ndarray) -> np.ndarray:
        rows = self.rows_of(np.unique(np.asarray(allowed_ids, dtype=np.int64)))
        return rows[self.alive[rows]]

    def _search_base(self, queries: np.ndarray, k: int,
                     rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        q = len(queries)
        empty = (np.full((q, k), PAD_SCORE, np.float32), np.full((q, k), -1, np.int64))
        if not len(self.ids) or (rows is not None and not len(rows)):
            return empty
        if rows is not None and len(rows) <= EXACT_SUBSET_MAX:
            scores, pos = _exact_rows(self.full, rows, queries, k)
        elif self.exact:
            scores, pos = self._flat_search(queries, k, rows)
        else:
            scores, pos = self._two_stage(queries, k, rows)
        ids = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)
        return scores, ids

    def _selector(self, rows: np.ndarray | None) -> faiss.IDSelector | None:
        if rows is not None:
            return faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
        if self._not_dead is None and not self.alive.all():  # built once per generation
            batch = faiss.IDSelectorBatch(np.flatnonzero(~self.alive).astype(np.int64))
            self._not_dead = faiss.IDSelectorNot(batch)
            self._not_dead.referenced_objects = [batch]  # SWIG does not keep it alive
        return self._not_dead

    def _flat_search(self, queries: np.ndarray, k: int,
                     rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        sel = self._selector(rows)
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
        if params is None:
            return self.base.flat().search(queries, k)
        return self.base.flat(filtered=True).search(queries, k, params=params)

    def _two_stage(self, queries: np.ndarray, k: int,
                   rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        spec = self.manifest.first_stage
        start, stop = spec.start, spec.stop
        n_cand = max(k, spec.candidates)
        nprobe = spec.nprobe
        if rows is not None:  # a narrow filter: probe more lists to find enough allowed rows
            share = max(len(rows) / len(self.ids), 1e-6)
            nprobe = int(min(spec.nlist or nprobe, np.ceil(nprobe / min(1.0, share * 8))))
        sel = self._selector(rows)
        if faiss.try_extract_index_ivf(self.first_stage) is not None:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        glob = np.ascontiguousarray(queries[:, start:stop])  # (Q, G)
        index = self.base.stage_index(filtered=sel is not None)
        _, cand = index.search(glob, n_cand, params=params)  # (Q, C) rows
        return _rerank(self.full, cand, queries, k)

    def _search_deltas(self, queries: np.ndarray, k: int,
                       allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = self.deltas.ids, self.deltas.vectors
        if allowed_ids is not None and len(ids):
            keep = np.isin(ids, allowed_ids)
            ids, vecs = ids[keep], vecs[keep]
        if not len(ids):
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
        scores = queries @ vecs.T  # (Q, M)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, min(k, M))
        return np.take_along_axis(scores, top, axis=1), ids[top]


def _exact_rows(full: np.ndarray, rows: np.ndarray, queries: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k over a set of base rows (a narrow filter)."""
    rows = np.sort(rows)
    scores = _inner(full[rows], queries).T  # (Q, R)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return _pad(np.take_along_axis(scores, top, axis=1), rows[top], k)


def _inner(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(R, D) float16 rows x (Q, D) float32 queries -> (R, Q) float32 inner products.
    torch widens float16 with SIMD, several times faster than numpy's astype."""
    widened = torch.from_numpy(np.ascontiguousarray(rows)).float()  # (R, D)
    return (widened @ torch.from_numpy(np.ascontiguousarray(queries)).T).numpy()


def _rerank(full: np.ndarray, cand: np.ndarray, queries: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows (Q, C) -> top k by the exact full inner product on stored vectors."""
    out_s = np.full((len(queries), k), PAD_SCORE, np.float32)
    out_p = np.full((len(queries), k), -1, np.int64)
    for qi, (query, rows) in enumerate(zip(queries, cand, strict=True)):
        rows = np.unique(rows[rows >= 0])  # sorted: friendlier to the memmap
        if not len(rows):
            continue
        scores = _inner(full[rows], query[None])[:, 0]  # (C,)
        top = np.argsort(-scores, kind="stable")[:k]
        out_s[qi, : len(top)], out_p[qi, : len(top)] = scores[top], rows[top]
    return out_s, out_p


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores, ids
    q = len(scores)
    return (np.hstack([scores, np.full((q, missing), PAD_SCORE, np.float32)]),
            np.hstack([ids, np.full((q, missing), -1, np.int64)]))


def _merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, M) scores and ids -> the best k per row, best first; -1 ids sink to the end."""
    scores = np.where(ids >= 0, scores, PAD_SCORE)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return _pad(np.take_along_axis(scores, top, axis=1).astype(np.float32),
                np.take_along_axis(ids, top, axis=1), k)


def load_index(folder: Path, version: str, gen: int = 0, *, use_gpu: bool = True) -> LoadedIndex:
    """Open a version folder (shared base, see ``load_base``) with generations 1..gen applied.
    The exact index of a Flat spec is built on the first search, not here."""
    base = load_base(folder, use_gpu)
    return LoadedIndex(version, base, read_deltas(folder, gen, base.manifest.dim))


def flat_index(full: np.ndarray, chunk: int = 65536) -> faiss.Index:
    """Exact inner-product index over (N, D) float16 rows, filled chunk by chunk."""
    index = faiss.IndexFlatIP(full.shape[1])
    for start in range(0, len(full), chunk):
        index.add(np.asarray(full[start : start + chunk], dtype=np.float32))
    return index


def _tune(index: faiss.Index, spec: FirstStage) -> None:
    """Default nprobe, and an HNSW efSearch wide enough for it (or for the candidates)."""
    if hasattr(index, "hnsw"):  # a pure HNSW first stage
        faiss.downcast_index(index).hnsw.efSearch = max(2 * spec.candidates, 64)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    ivf.nprobe = spec.nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(2 * ivf.nprobe, 64)
