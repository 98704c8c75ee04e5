"""What the Milvus backend does around a publish: with no live or previous version it says so
without pymilvus logging an ERROR traceback (it logs one for every describe_alias of a missing
alias, so before the first build every search would fill the operator's log), and a flushed
build goes live only once Milvus has indexed its segments."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexer.backends import Rows
from tests.indexer.test_milvus_consistency import Recording

pytest.importorskip("pymilvus", reason="the scale extra")


def test_missing_aliases_are_answered_without_error_logs(milvus_backend, caplog):
    caplog.set_level(logging.WARNING)
    assert milvus_backend.current_version() is None
    assert milvus_backend.previous_version() is None and milvus_backend.open() is None
    v = np.eye(8, dtype=np.float32)[:2]
    encoder = {"name": "synthetic", "dim": 8, "checkpoint_sha256": "sha-a", "parts": []}
    version = milvus_backend.build([Rows(np.array([1, 2], np.int64), v)], total=2,
                                   encoder=encoder)
    milvus_backend.publish(version)  # looks up the previous alias, which does not exist yet
    assert milvus_backend.current_version() == version
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage()[:200] for r in errors]


def test_a_flushed_build_is_published_only_once_milvus_has_indexed_it(milvus_backend):
    """A build of FLUSH_MIN rows or more is flushed; build() returns only when every row of
    either collection is in an indexed segment (else the first searches brute-force them)."""
    from indexer.backends.milvus_backend import FLUSH_MIN

    n = FLUSH_MIN + 500
    v = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    v[:, :8] /= np.linalg.norm(v[:, :8], axis=1, keepdims=True)
    v[:, 8:] /= np.linalg.norm(v[:, 8:], axis=1, keepdims=True)
    parts = [{"name": "global", "start": 0, "stop": 8, "group": "global"},
             {"name": "stripe_1", "start": 8, "stop": 16, "group": "local"}]
    encoder = {"name": "synthetic", "dim": 16, "checkpoint_sha256": "sha-a", "parts": parts}
    client = milvus_backend.client
    milvus_backend.client = recording = Recording(client)
    try:
        version = milvus_backend.build([Rows(np.arange(n, dtype=np.int64), v)], total=n,
                                       encoder=encoder, factory="IVF_FLAT,nlist=16")
    finally:
        milvus_backend.client = client
    names = [name for name, _ in recording.calls]
    last_flush = max(i for i, name in enumerate(names) if name == "flush")
    assert "describe_index" in names[last_flush:]  # asked after the flush, before returning
    for collection in (version, f"{version}_fs"):
        index = client.describe_index(collection, client.list_indexes(collection)[0])
        assert index["indexed_rows"] == index["total_rows"] == n, index
