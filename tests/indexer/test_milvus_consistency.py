"""The Milvus backend's search path reads at its ``read_consistency`` (Strong by default; the
faster levels skip Strong's wait for the newest time tick, 200-400 ms a request), and what
the levels promise holds on a real server: Strong sees another process's add at once, Session
soon after it returns, and a version published a moment ago is found at any level."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from indexer.backends import Rows
from service.config import Settings

pytest.importorskip("pymilvus", reason="the scale extra")
ENCODER = {"name": "synthetic", "dim": 8, "checkpoint_sha256": "sha-a", "parts": []}


def unit_rows(ids, seed=0) -> Rows:
    v = np.random.default_rng(seed).standard_normal((len(ids), 8)).astype(np.float32)
    return Rows(np.asarray(ids, np.int64), v / np.linalg.norm(v, axis=1, keepdims=True))


class Recording:
    """Forwards every call to the real client and notes (method, consistency_level)."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs.get("consistency_level")))
            return method(*args, **kwargs)
        return call


def test_the_search_path_reads_at_the_configured_level(milvus_uri, tmp_path, request):
    from indexer.backends.milvus_backend import MilvusBackend
    from tests.conftest import milvus_prefix

    backend = MilvusBackend(root=tmp_path, uri=milvus_uri, prefix=milvus_prefix(request),
                            read_consistency="Session")
    try:
        rows = unit_rows(range(1, 9))  # inserted by this process: Session sees them at once
        backend.publish(backend.build([rows], total=8, encoder=ENCODER))
        view = backend.open()
        view.client = recording = Recording(view.client)
        assert view.search(rows.vectors[:2], 3).ids[:, 0].tolist() == [1, 2]
        assert view.vectors(np.array([3])).shape == (1, 8)
        reads = [c for c in recording.calls if c[0] in ("query", "search")]
        assert reads and all(level == "Session" for _, level in reads), reads
        recording.calls.clear()
        assert view.check() == []  # maintenance reads stay Strong
        checks = [c for c in recording.calls if c[0] in ("query", "search")]
        assert checks and all(level in ("Strong", None) for _, level in checks), checks
    finally:
        backend.drop_all()
        backend.close()


ADD_IN_ANOTHER_PROCESS = """
import sys
import numpy as np
from indexer.backends import Rows
from indexer.backends.milvus_backend import MilvusBackend
uri, prefix, root = sys.argv[1:4]
v = np.ones((1, 8), np.float32) / np.sqrt(8)
backend = MilvusBackend(root=root, uri=uri, prefix=prefix)
print(backend.add(Rows(np.array([77], np.int64), v)))
backend.close()
"""


def test_another_processs_add_is_seen_soon_by_session_and_at_once_by_strong(
        milvus_uri, tmp_path, request):
    from indexer.backends.milvus_backend import MilvusBackend
    from tests.conftest import milvus_prefix

    prefix = milvus_prefix(request)
    strong = MilvusBackend(root=tmp_path, uri=milvus_uri, prefix=prefix)
    session = MilvusBackend(root=tmp_path, uri=milvus_uri, prefix=prefix,
                            read_consistency="Session")
    try:
        strong.publish(strong.build([unit_rows(range(1, 9))], total=8, encoder=ENCODER))
        assert session.open() is not None  # just published: found at once at any level
        out = subprocess.run([sys.executable, "-c", ADD_IN_ANOTHER_PROCESS, milvus_uri, prefix,
                              str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        query = np.ones((1, 8), np.float32) / np.sqrt(8)
        view = strong.open()
        assert view.version == out.stdout.split()[-1] and view.search(query, 1).ids[0, 0] == 77
        deadline = time.monotonic() + 10
        while (seen := session.open()).search(query, 1).ids[0, 0] != 77:
            assert time.monotonic() < deadline, "another process's add not seen in 10 s"
            time.sleep(0.1)
        assert seen.version == view.version
    finally:
        strong.close()
        session.drop_all()
        session.close()


def test_an_unknown_consistency_level_is_refused(tmp_path):
    from indexer.backends.milvus_backend import MilvusBackend

    with pytest.raises(ValueError, match="Strong, Session, Bounded, Eventually"):
        MilvusBackend(root=tmp_path, uri="http://127.0.0.1:1", read_consistency="strong")
    with pytest.raises(ValidationError, match="milvus_consistency"):
        Settings(milvus_consistency="Customized")
