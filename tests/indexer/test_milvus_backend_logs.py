"""A Milvus backend with no live or previous version says so without pymilvus logging an
ERROR traceback (it logs one for every describe_alias of a missing alias): before the first
build every search would otherwise fill the operator's log."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from indexer.backends import Rows

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
