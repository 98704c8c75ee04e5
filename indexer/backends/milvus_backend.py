"""Milvus as the index backend (``TBPS_INDEX_BACKEND=milvus``), through pymilvus.

A version is a pair of collections named ``<prefix>_v<time>_<hex>``:
- the version itself: crop id (INT64 primary key), the full vector (FLOAT_VECTOR D, FLAT
  index: exact inner product), and one field per filter attribute
  (``indexer.filters.ATTRIBUTES``: camera id INT64, -1 unknown; time DOUBLE seconds, unknown
  stored as ``UNKNOWN_TIME``; height INT64 ...), named in the manifest's ``attributes``
  (versions built before a new attribute keep their fields; the service filters those by ids);
- ``<version>_fs`` for approximate specs: the same rows with the first stage's slice (the
  global part) under the stage's Milvus index (IVF_SQ8, HNSW ...).
Search filters are Milvus boolean expressions evaluated inside the engine (``filters_in_engine``).
Approximate search takes candidates from ``_fs`` under the filter and re-ranks them on the
full vectors, so scores are the model's full inner product, as in the FAISS backend.

Milvus 2.3 has one vector field per collection, hence the pair; 2.4's multi-vector search would
fit both in one collection but its server is not packaged for this machine.

Pointers are collection aliases: ``<prefix>_live`` and ``<prefix>_previous`` (publish and
rollback move them; a search by alias never sees a half-built version). Each version's
manifest, completeness and generation (bumped by every add and remove) live in the
``<prefix>_meta`` collection, so the pointer ``<version>+<generation>`` changes on every write.
The manifest is what the build wrote (its ``count`` stays the build's, as in the FAISS
backend); ``MilvusView.count`` is what is searchable now.

Every call goes through ``milvus_calls.GuardedClient``: under TBPS_MILVUS_TIMEOUT, and a server
that cannot be reached (down, network gone) raises ``BackendUnavailable``; nothing here
remembers that it was down, so the next call after it is back succeeds.

Rows are written as row dicts through ``MilvusClient.insert`` / ``upsert`` in chunks of
``INSERT_CHUNK``. The column-wise form (pymilvus ``Collection.insert`` with one list per field)
was measured no faster with pymilvus 3.0.2 (``bench/milvus_insert_bench.py``: 0.58x and 1.0x),
and is an ORM API that pymilvus 3.1 removes.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from indexer.backends.base import BackendUnavailable, NoIndex, Rows, SearchFilter, split_pointer
from indexer.backends.locking import build_lock
from indexer.backends.milvus_spec import index_params, milvus_first_stage
from indexer.backends.milvus_view import MilvusView
from indexer.filters import ATTRIBUTES, attribute_arrays
from indexer.manifest import FirstStage, Manifest

log = logging.getLogger(__name__)

INSERT_CHUNK = 2_000  # rows per insert call: 2000 x 1280 float32 = 10 MB, under gRPC's 64 MB
MANIFEST_MAX = 65_535  # VARCHAR limit of the meta collection
# What a search waits for. Strong (the default) sees every write at once but makes every
# request wait until the query node has caught up with the newest timestamp, one or two time
# ticks: 200-400 ms a request on this machine against 3 ms for the others (docs/scaling.md).
# Session sees this process's inserts and deletes at once (pymilvus keeps their timestamps;
# not upserts, which is how adds and the version pointer are written) and everything else
# about a time tick after it returns, so a search may briefly miss a new version or add;
# Bounded and Eventually as Milvus defines them.
READ_CONSISTENCY = ("Strong", "Session", "Bounded", "Eventually")
# gRPC's own reconnect backoff grows x1.6 from 1 s up to 120 s: a service whose Milvus was
# down for a while stayed 503 for seconds (minutes, after a long outage) once it was back.
# Capped, a lost channel tries again every second at most: one refused connect a second while
# the server is down, against a search that answers within ~1 s of its return (measured with
# grpcio alone: down 5-10 s, answered again after 5.1-5.6 s by default, 0.5 s capped).
GRPC_OPTIONS = {"grpc.initial_reconnect_backoff_ms": 250, "grpc.max_reconnect_backoff_ms": 1000}
FLUSH_MIN = 10_000  # builds from this size are flushed (sealed, indexed) before publish
INDEX_WAIT_S = 3_600.0  # longest wait for Milvus to index a flushed build before publishing


class MilvusBackend:
    """Index versions as Milvus collections; see the module docstring."""

    name = "milvus"
    filters_in_engine = True

    def __init__(self, *, root: Path, uri: str | None = None, token: str = "",
                 prefix: str = "tbps", timeout: float = 30.0,
                 read_consistency: str = "Strong") -> None:
        """``read_consistency``: the Milvus consistency level of the search path (``open``
        and a view's searches and vector fetches); everything else reads Strong. See
        ``READ_CONSISTENCY``."""
        if read_consistency not in READ_CONSISTENCY:
            raise ValueError(f"read_consistency {read_consistency!r} is not one of "
                             f"{', '.join(READ_CONSISTENCY)}")
        self.read_consistency = read_consistency
        if not uri:
            raise BackendUnavailable("the milvus backend needs a URI (TBPS_MILVUS_URI)")
        try:
            from pymilvus import MilvusClient  # the scale extra

            from indexer.backends.milvus_calls import GuardedClient, unreachable_message
        except ModuleNotFoundError as exc:
            raise BackendUnavailable(f"pymilvus is not installed: {exc}") from exc
        self.work_dir = Path(root)
        self.builds_dir = self.work_dir / "builds"  # unused: a Milvus build is not resumed
        self.prefix = prefix
        try:
            client = MilvusClient(uri=uri, token=token, timeout=timeout, grpc_options=GRPC_OPTIONS)
        except Exception as exc:  # pymilvus raises MilvusException subclasses, or grpc errors
            raise BackendUnavailable(unreachable_message(uri, exc)) from exc
        # every call: under `timeout`, a lost server as BackendUnavailable (milvus_calls)
        self.client = GuardedClient(client, uri=uri, timeout=timeout)
        self._ensure_meta()

    # ---- pointers ----
    @property
    def live_alias(self) -> str:
        return f"{self.prefix}_live"

    @property
    def previous_alias(self) -> str:
        return f"{self.prefix}_previous"

    @property
    def meta_name(self) -> str:
        return f"{self.prefix}_meta"

    def current_version(self) -> str | None:
        return self._pointer(self._aliased(self.live_alias))

    def previous_version(self) -> str | None:
        return self._pointer(self._aliased(self.previous_alias))

    def manifest(self, version: str | None = None) -> Manifest:
        base = self._resolve(version)
        manifest = _complete_manifest(base, self._meta_row(base))
        if manifest is None:
            raise NoIndex(f"no complete Milvus index version {base!r}")
        return manifest

    # ---- build, publish, rollback ----
    def build(self, batches: Iterable[Rows], *, total: int, encoder: dict[str, Any],
              factory: str | None = None) -> str:
        dim = int(encoder.get("dim", 0))
        stage = milvus_first_stage(total, factory, list(encoder.get("parts", [])), dim)
        name = f"{self.prefix}_v{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(3)}"
        self._write_meta(name, manifest="{}", generation=0, complete=False)
        self._create_version(name, dim, stage)
        written = self._insert_all(name, stage, batches)  # every attribute of ATTRIBUTES
        if written != total:
            raise ValueError(f"build {name}: {written} rows given, {total} expected")
        self._seal(name, stage, written)
        factory_name = "Flat" if stage is None else (
            stage.factory if stage.input == "global" else f"full:{stage.factory}")
        manifest = Manifest.new(encoder=encoder, count=written, dim=dim, factory=factory_name,
                                first_stage=stage, backend=self.name,
                                attributes=tuple(ATTRIBUTES)).replace(
                                    vectors_dtype="float32")
        self._write_meta(name, manifest=manifest.to_json(), generation=0, complete=True)
        log.info("built Milvus version %s: %d rows, %s", name, written, factory_name)
        return name

    def publish(self, version: str, *, keep_previous: bool = False) -> None:
        base = split_pointer(version)[0]
        self.manifest(base)  # NoIndex unless complete
        old = self._aliased(self.live_alias)
        self._point(self.live_alias, base)
        if old is not None and old != base and not keep_previous:
            self._point(self.previous_alias, old)
        log.info("published Milvus version %s (previous %s)", base,
                 self._aliased(self.previous_alias))

    def rollback(self) -> str:
        live, previous = self._aliased(self.live_alias), self._aliased(self.previous_alias)
        if live is None or previous is None:
            raise NoIndex("no previous Milvus index version to roll back to")
        self._point(self.live_alias, previous)
        self._point(self.previous_alias, live)
        return str(self.current_version())

    # ---- writes to the live version ----
    def add(self, rows: Rows) -> str:
        base = self._aliased(self.live_alias)
        if base is None:
            raise NoIndex("no live Milvus index version to add to")
        manifest = self.manifest(base)
        for lo in range(0, len(rows), INSERT_CHUNK):
            chunk = rows.select(np.arange(len(rows))[lo:lo + INSERT_CHUNK])
            for collection, data in _collections_rows(base, manifest.first_stage, chunk,
                                                      manifest.attributes):
                self.client.upsert(collection, data)
        return self._bump(base)

    def remove(self, ids: np.ndarray) -> str | None:
        base = self._aliased(self.live_alias)
        if base is None:
            return None
        stage = self.manifest(base).first_stage
        keys = np.asarray(ids, np.int64).tolist()
        if keys:
            for collection in _collection_names(base, stage):
                self.client.delete(collection, ids=keys)
        return self._bump(base)

    # ---- reading ----
    def open(self, version: str | None = None) -> MilvusView | None:
        try:
            base = self._resolve(version)
        except NoIndex:
            return None
        row = self._meta_row(base, consistency=self.read_consistency)
        manifest = _complete_manifest(base, row)
        if manifest is None and self.read_consistency != "Strong":
            row = self._meta_row(base)  # published a moment ago: not visible at this level yet
            manifest = _complete_manifest(base, row)
        if manifest is None:
            return None
        return MilvusView(self.client, base, manifest, generation=int(row["generation"]),
                          consistency=self.read_consistency)

    def search(self, queries: np.ndarray, k: int, *, filter: SearchFilter | None = None,
               allowed_ids: np.ndarray | None = None):
        view = self.open()
        if view is None:
            raise NoIndex("no live Milvus index version")
        return view.search(queries, k, filter=filter, allowed_ids=allowed_ids)

    def check(self, version: str | None = None) -> list[str]:
        view = self.open(version)
        if view is None:
            return [f"corrupt: no complete Milvus index version {version or 'live'}"]
        return view.check()

    # ---- housekeeping ----
    def unfinished(self) -> list[str]:
        rows = self.client.query(self.meta_name, filter="complete == false",
                                 output_fields=["key"])
        known = {r["key"] for r in self.client.query(self.meta_name, filter='key != ""',
                                                     output_fields=["key"])}
        orphans = [c for c in self._version_collections() if c not in known]
        return sorted({r["key"] for r in rows} | set(orphans))

    def prune(self) -> list[str]:
        keep = {self._aliased(self.live_alias), self._aliased(self.previous_alias)}
        removed = [c for c in self._version_collections() if c not in keep]
        for base in removed:
            for collection in (base, f"{base}_fs"):
                if self.client.has_collection(collection):
                    self.client.drop_collection(collection)
            self.client.delete(self.meta_name, ids=[base])
        return removed

    def lock(self) -> AbstractContextManager[None]:
        return build_lock(self.work_dir)

    def drop_all(self) -> None:
        """Remove every collection and alias of this prefix (tests, benchmarks)."""
        for alias in (self.live_alias, self.previous_alias):
            if self._aliased(alias) is not None:
                self.client.drop_alias(alias)
        for base in self._version_collections():
            for collection in (base, f"{base}_fs"):
                if self.client.has_collection(collection):
                    self.client.drop_collection(collection)
        self.client.drop_collection(self.meta_name)

    def close(self) -> None:
        """Close this backend's connection to the server."""
        self.client.close()

    # ---- helpers ----
    def _ensure_meta(self) -> None:
        if self.client.has_collection(self.meta_name):
            self.client.load_collection(self.meta_name)
            return
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, description="tbps index versions")
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("manifest", DataType.VARCHAR, max_length=MANIFEST_MAX)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("complete", DataType.BOOL)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus 2.3 needs one
        index = self.client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(self.meta_name, schema=schema, index_params=index,
                                      consistency_level="Strong")
        self.client.load_collection(self.meta_name)

    def _write_meta(self, key: str, *, manifest: str, generation: int, complete: bool) -> None:
        if len(manifest) > MANIFEST_MAX:
            raise ValueError(f"manifest of {key} is {len(manifest)} characters, over "
                             f"{MANIFEST_MAX}")
        self.client.upsert(self.meta_name, [{"key": key, "manifest": manifest,
                                             "generation": generation, "complete": complete,
                                             "unused": [0.0, 0.0]}])

    def _meta_row(self, key: str, *, consistency: str = "Strong") -> dict[str, Any] | None:
        rows = self.client.query(self.meta_name, ids=[key],
                                 output_fields=["manifest", "generation", "complete"],
                                 consistency_level=consistency)
        return rows[0] if rows else None

    def _bump(self, base: str) -> str:
        """A new generation of the live version (its manifest, the build's, unchanged);
        returns the new pointer."""
        row = self._meta_row(base)
        if row is None:
            raise NoIndex(f"Milvus index version {base!r} has no meta row")
        self._write_meta(base, manifest=row["manifest"], generation=int(row["generation"]) + 1,
                         complete=True)
        return str(self.current_version())

    def _create_version(self, name: str, dim: int, stage: FirstStage | None) -> None:
        """The version's collections, indexed and loaded before the first insert (inserted
        rows are searchable at once; Milvus indexes each segment as it seals)."""
        from pymilvus import DataType, MilvusClient

        for collection, width, collection_stage in _collection_shapes(name, dim, stage):
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=width)
            for attr in ATTRIBUTES.values():
                schema.add_field(attr.name, getattr(DataType, attr.milvus_type))
            index = self.client.prepare_index_params()
            index.add_index("vector", metric_type="IP", **index_params(collection_stage))
            self.client.create_collection(collection, schema=schema, index_params=index,
                                          consistency_level="Strong")

    def _insert_all(self, name: str, stage: FirstStage | None,
                    batches: Iterable[Rows]) -> int:
        written, seen = 0, set()
        for batch in batches:
            ids = set(batch.ids.tolist())
            if len(ids) != len(batch) or seen & ids:
                raise ValueError(f"build {name}: crop ids must be unique")
            seen |= ids
            for lo in range(0, len(batch), INSERT_CHUNK):
                chunk = batch.select(np.arange(len(batch))[lo:lo + INSERT_CHUNK])
                for collection, data in _collections_rows(name, stage, chunk,
                                                          tuple(ATTRIBUTES)):
                    self.client.insert(collection, data)
                written += len(chunk)
        return written

    def _seal(self, name: str, stage: FirstStage | None, written: int) -> None:
        """Flush a large build so every segment is sealed, then wait until Milvus has built
        the index of every sealed segment (it does so in the background after the flush: a
        version published before that searches its unindexed segments by brute force, at 1M
        rows 0.5 s a query and more). A small build stays in growing segments, which Milvus
        searches exactly."""
        if written < FLUSH_MIN:
            return
        names = _collection_names(name, stage)
        for collection in names:
            self.client.flush(collection)
        started = time.monotonic()
        for collection in names:
            while (unindexed := self._unindexed_rows(collection)) > 0:
                if time.monotonic() - started > INDEX_WAIT_S:
                    log.warning("publishing %s with %d rows not indexed yet after %.0f s "
                                "(searched by brute force until Milvus indexes them)",
                                collection, unindexed, INDEX_WAIT_S)
                    break
                time.sleep(1.0)
        log.info("Milvus indexed %s in %.1f s after the flush", name, time.monotonic() - started)

    def _unindexed_rows(self, collection: str) -> int:
        """Rows of the collection's segments that have no index yet. Not Milvus's
        ``pending_index_rows``: that also counts the segments compaction is writing (which
        replace indexed ones only once indexed themselves) and at 1M rows kept growing for
        minutes after every served row was indexed."""
        out = 0
        for index in self.client.list_indexes(collection):
            state = self.client.describe_index(collection, index)
            out = max(out, int(state["total_rows"]) - int(state["indexed_rows"]))
        return out

    def _aliased(self, alias: str) -> str | None:
        from pymilvus import MilvusException

        # asked first: pymilvus logs an ERROR with a traceback for every describe_alias of
        # an alias that does not exist (no live version yet, no previous one)
        if alias not in self.client.list_aliases()["aliases"]:
            return None
        try:
            return str(self.client.describe_alias(alias)["collection_name"])
        except MilvusException:  # dropped since (a lost server is BackendUnavailable)
            return None

    def _point(self, alias: str, collection: str) -> None:
        if self._aliased(alias) is None:
            self.client.create_alias(collection, alias)
        else:
            self.client.alter_alias(collection, alias)

    def _pointer(self, base: str | None) -> str | None:
        if base is None:
            return None
        row = self._meta_row(base)
        generation = int(row["generation"]) if row else 0
        return f"{base}+{generation}" if generation else base

    def _resolve(self, version: str | None) -> str:
        if version is None:
            base = self._aliased(self.live_alias)
            if base is None:
                raise NoIndex("no live Milvus index version")
            return base
        return split_pointer(version)[0]

    def _version_collections(self) -> list[str]:
        head = f"{self.prefix}_v"
        names = self.client.list_collections(timeout=self.client.timeout)  # not in its signature
        return sorted(c for c in names if c.startswith(head) and not c.endswith("_fs"))


def _complete_manifest(base: str, row: dict[str, Any] | None) -> Manifest | None:
    """The manifest of a version's meta row, or None while the row is missing or incomplete."""
    if row is None or not row["complete"]:
        return None
    return Manifest.from_json(row["manifest"]).replace(version=base)


def _collection_shapes(base: str, dim: int,
                       stage: FirstStage | None) -> list[tuple[str, int, FirstStage | None]]:
    """(collection, vector width, the stage its index serves) for a version."""
    shapes: list[tuple[str, int, FirstStage | None]] = [(base, dim, None)]
    if stage is not None:
        shapes.append((f"{base}_fs", stage.stop - stage.start, stage))
    return shapes


def _collection_names(base: str, stage: FirstStage | None) -> list[str]:
    return [base] + ([f"{base}_fs"] if stage else [])


def _collections_rows(base: str, stage: FirstStage | None, rows: Rows,
                      names: tuple[str, ...]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The insert payloads for a version's collections: full vectors, and the stage's slice;
    each row with the attributes ``names`` (the version's fields; unknown when not given)."""
    vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32)  # (N, D)
    columns = {name: ATTRIBUTES[name].stored(values).tolist()
               for name, values in attribute_arrays(len(rows), rows.attributes, names).items()}
    out = [(base, _payload(rows.ids, vectors, columns))]
    if stage is not None:
        sliced = np.ascontiguousarray(vectors[:, stage.start:stage.stop])  # (N, G)
        out.append((f"{base}_fs", _payload(rows.ids, sliced, columns)))
    return out


def _payload(ids: np.ndarray, vectors: np.ndarray,
             columns: dict[str, list]) -> list[dict[str, Any]]:
    return [{"id": int(i), "vector": v, **{name: col[r] for name, col in columns.items()}}
            for r, (i, v) in enumerate(zip(ids, vectors, strict=True))]
