"""One Milvus index version opened for reading: exact or two-stage search, vectors by id, check.

The view holds the version's collection name, not an alias, so a publish does not change what
it searches. Its searches and vector fetches read at the backend's ``read_consistency``
(Strong by default: adds and removes visible at once; the faster levels see them about a time
tick later); Milvus has no snapshot reads in 2.3, and the pointer's generation tells a
searcher they happened. ``check``, ``count`` and ``live_ids`` always read Strong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.backends.base import PAD_SCORE, Hits, SearchFilter
from indexer.backends.milvus_spec import filter_expression, search_params
from indexer.manifest import Manifest

QUERY_CHUNK = 8_192  # ids per query-by-id call (Milvus caps an expression's size)
CHECK_SAMPLE = 64  # rows compared between the two collections by ``check``
NORM_TOLERANCE = 1e-2  # stored float32 parts are unit norm up to the encoder's rounding


def count_rows(client: Any, collection: str) -> int:
    rows = client.query(collection, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


class MilvusView:
    """A version of a Milvus index, searched by collection name, through the backend's
    ``milvus_calls.GuardedClient`` (a lost server raises ``BackendUnavailable``)."""

    def __init__(self, client: Any, base: str, manifest: Manifest, *, generation: int,
                 consistency: str = "Strong") -> None:
        self.client = client
        self.consistency = consistency  # of search() and vectors()
        self.base = base
        self._manifest = manifest
        self.generation = generation
        self.version = f"{base}+{generation}" if generation else base

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def count(self) -> int:
        return count_rows(self.client, self.base)

    def live_ids(self) -> np.ndarray:
        iterator = self.client.query_iterator(self.base, batch_size=QUERY_CHUNK, filter="",
                                              output_fields=["id"])
        ids: list[int] = []
        with self.client.reachable():  # the iterator calls the server itself
            while batch := iterator.next():
                ids.extend(int(r["id"]) for r in batch)
        iterator.close()
        return np.sort(np.asarray(ids, np.int64))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        found = self._fetch(self.base, ids)
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"crop ids not in index version {self.base}: {missing[:10]}")
        return np.stack([found[int(i)] for i in ids]) if len(ids) else \
            np.zeros((0, self._manifest.dim), np.float32)

    def search(self, queries: np.ndarray, k: int, *, filter: SearchFilter | None = None,
               allowed_ids: np.ndarray | None = None) -> Hits:
        queries = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
        scores = np.full((len(queries), k), PAD_SCORE, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        expr = filter_expression(filter, allowed_ids)
        if expr is None or k <= 0 or len(queries) == 0:
            return Hits(scores, ids, self.version)
        stage = self._manifest.first_stage
        if stage is None:
            hits = self._milvus_search(self.base, queries, k, expr, None)
        else:
            candidates = self._milvus_search(f"{self.base}_fs",
                                             queries[:, stage.start:stage.stop],
                                             max(k, stage.candidates), expr, stage)
            hits = self._rerank(queries, candidates, k)
        for q, row in enumerate(hits):
            ids[q, :len(row)] = [i for i, _ in row]
            scores[q, :len(row)] = [s for _, s in row]
        return Hits(scores, ids, self.version)

    def check(self) -> list[str]:
        problems: list[str] = []
        count, declared = self.count, self._manifest.count
        if self.generation == 0 and count != declared:  # adds and removes change the count
            problems.append(f"corrupt: {self.base} holds {count} rows, its build wrote "
                            f"{declared}")
        ids = self.live_ids()
        if len(np.unique(ids)) != len(ids):
            problems.append(f"corrupt: {self.base} has duplicate crop ids")
        rng = np.random.default_rng(0)
        sample = rng.choice(ids, min(CHECK_SAMPLE, len(ids)), replace=False) if len(ids) else ids
        full = self._fetch(self.base, sample, consistency="Strong")
        problems += self._check_norms(full)
        stage = self._manifest.first_stage
        if stage is not None:
            problems += self._check_stage(full, sample, stage.start, stage.stop)
        return problems

    # ---- helpers ----
    def _milvus_search(self, collection: str, queries: np.ndarray, limit: int, expr: str,
                       stage: Any) -> list[list[tuple[int, float]]]:
        results = self.client.search(collection, data=list(queries), filter=expr, limit=limit,
                                     search_params=search_params(stage, limit),
                                     anns_field="vector", consistency_level=self.consistency)
        return [[(int(hit["id"]), float(hit["distance"])) for hit in row] for row in results]

    def _rerank(self, queries: np.ndarray, candidates: list[list[tuple[int, float]]],
                k: int) -> list[list[tuple[int, float]]]:
        """Exact full-vector inner products over each query's first-stage candidates."""
        wanted = np.unique([i for row in candidates for i, _ in row]).astype(np.int64)
        full = self._fetch(self.base, wanted)
        out = []
        for query, row in zip(queries, candidates, strict=True):
            cand = np.asarray([i for i, _ in row if i in full], np.int64)  # (C,)
            if len(cand) == 0:
                out.append([])
                continue
            scores = np.stack([full[int(i)] for i in cand]) @ query  # (C,)
            order = np.argsort(-scores, kind="stable")[:k]
            out.append([(int(cand[j]), float(scores[j])) for j in order])
        return out

    def _fetch(self, collection: str, ids: np.ndarray, *,
               consistency: str | None = None) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        keys = np.asarray(ids, np.int64).tolist()
        for lo in range(0, len(keys), QUERY_CHUNK):
            rows = self.client.query(collection, ids=keys[lo:lo + QUERY_CHUNK],
                                     output_fields=["vector"],
                                     consistency_level=consistency or self.consistency)
            found |= {int(r["id"]): np.asarray(r["vector"], np.float32) for r in rows}
        return found

    def _check_norms(self, full: dict[int, np.ndarray]) -> list[str]:
        """Each unit block (a part's group: VGSG's stripes share "local") has norm 1."""
        parts = self._manifest.parts or [{"name": "all", "start": 0, "stop": self._manifest.dim}]
        groups: dict[str, list[int]] = {}
        for p in parts:
            groups.setdefault(p.get("group") or p["name"], []).extend(range(p["start"], p["stop"]))
        bad = [crop for crop, vector in full.items()
               if any(abs(np.linalg.norm(vector[cols]) - 1.0) > NORM_TOLERANCE
                      for cols in groups.values())]
        return [f"{self.base}: {len(bad)} sampled rows are not unit norm per part "
                f"(e.g. crop {bad[0]})"] if bad else []

    def _check_stage(self, full: dict[int, np.ndarray], sample: np.ndarray, start: int,
                     stop: int) -> list[str]:
        first = self._fetch(f"{self.base}_fs", sample, consistency="Strong")
        problems = []
        if len(first) != len(full):
            problems.append(f"corrupt: {self.base}_fs lacks {len(full) - len(first)} of "
                            f"{len(full)} sampled rows")
        differ = [c for c, v in first.items()
                  if c in full and not np.allclose(v, full[c][start:stop], atol=1e-6)]
        if differ:
            problems.append(f"corrupt: {self.base}_fs differs from the full vectors for "
                            f"{len(differ)} sampled rows (e.g. crop {differ[0]})")
        count, total = count_rows(self.client, f"{self.base}_fs"), self.count
        if count != total:
            problems.append(f"corrupt: {self.base}_fs holds {count} rows, {self.base} {total}")
        return problems
