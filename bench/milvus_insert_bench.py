"""Row dicts against columns: the time to insert the same rows into a Milvus collection shaped
like a version's (id, 1280-d vector, camera, time), both ways, on one server in one run:

    .venv/bin/python -m bench.milvus_insert_bench --n 20000 --milvus-uri http://127.0.0.1:19530

"rows" is ``MilvusClient.insert`` with one dict per row (how the backend inserted before);
"columns" is pymilvus ``Collection.insert`` with one list per field and the vectors as one
(N, D) array. Both insert into a collection that is indexed and loaded first (how the backend
builds today). "unloaded" is the rows form into a collection created without an index (so not
loaded), then indexed, flushed and loaded: its time includes the index and the load. Chunks of
``INSERT_CHUNK`` rows, as the backend.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.envinfo import environment
from indexer.backends.milvus_backend import INSERT_CHUNK


def make_collection(client, name: str, dim: int, *, loaded: bool = True) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("camera_id", DataType.INT64)
    schema.add_field("ts", DataType.DOUBLE)
    if not loaded:
        client.create_collection(name, schema=schema)
        return
    client.create_collection(name, schema=schema, index_params=flat_index(client))


def flat_index(client):
    index = client.prepare_index_params()
    index.add_index("vector", metric_type="IP", index_type="FLAT", params={})
    return index


def timed_insert(insert, n: int, vectors: np.ndarray) -> float:
    ids, cams, ts = np.arange(n, dtype=np.int64), np.arange(n) % 100, np.full(n, 1.7e9)
    started = time.perf_counter()
    for lo in range(0, n, INSERT_CHUNK):
        hi = min(lo + INSERT_CHUNK, n)
        insert(ids[lo:hi], vectors[lo:hi], cams[lo:hi], ts[lo:hi])
    return time.perf_counter() - started


def main() -> None:
    from pymilvus import Collection, MilvusClient, connections

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--milvus-uri", required=True)
    ap.add_argument("--ways", default="rows,columns,unloaded")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    client = MilvusClient(uri=args.milvus_uri)
    connections.connect("insert-bench", uri=args.milvus_uri)
    v = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
    vectors = v / np.linalg.norm(v, axis=1, keepdims=True)  # (N, D)
    seconds = {}
    for way in args.ways.split(","):
        name = f"insert_bench_{way}"
        if client.has_collection(name):
            client.drop_collection(name)
        make_collection(client, name, args.dim, loaded=way != "unloaded")
        orm = Collection(name, using="insert-bench")

        def insert(i, vec, c, t, way=way, name=name, orm=orm):
            if way in ("rows", "unloaded"):
                rows = zip(i, vec, c, t, strict=True)
                client.insert(name, [{"id": int(a), "vector": b, "camera_id": int(d),
                                      "ts": float(e)} for a, b, d, e in rows])
            else:
                orm.insert([i, vec, c, t])

        seconds[way] = round(timed_insert(insert, args.n, vectors), 2)
        if way == "unloaded":
            started = time.perf_counter()
            client.flush(name)
            client.create_index(name, flat_index(client))
            client.load_collection(name)
            seconds["unloaded_index_load"] = round(time.perf_counter() - started, 2)
            seconds["unloaded_total"] = round(seconds[way] + seconds["unloaded_index_load"], 2)
        client.drop_collection(name)
    report = {"n": args.n, "dim": args.dim, "seconds": seconds,
              "rows_per_s": {k: round(args.n / s) for k, s in seconds.items()
                             if k != "unloaded_index_load"},
              "speedup": {k: round(seconds["rows"] / s, 2) for k, s in seconds.items()
                          if "rows" in seconds and k not in ("rows", "unloaded_index_load")},
              "environment": environment()}
    print(json.dumps({k: report[k] for k in ("n", "seconds", "rows_per_s", "speedup")}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
