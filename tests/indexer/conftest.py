"""Index backends for the backend tests: a real Milvus standalone server for the session (the
``milvus`` package's binary, data in a temporary folder, stopped after), and the backend the
search suite runs against, chosen by ``TBPS_INDEX_BACKEND`` (faiss by default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("milvus", reason="the embedded Milvus server (test extra)")
    from indexer.backends.milvus_local import local_milvus

    with local_milvus(tmp_path_factory.mktemp("milvus")) as uri:
        yield uri


@pytest.fixture
def milvus_backend(milvus_uri: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A Milvus backend with a prefix of its own (one test's collections), dropped after."""
    from indexer.backends.milvus_backend import MilvusBackend

    prefix = "t" + request.node.name.encode().hex()[:24] + os.urandom(3).hex()
    backend = MilvusBackend(root=tmp_path / "work", uri=milvus_uri, prefix=prefix)
    yield backend
    backend.drop_all()


@pytest.fixture
def index_backend(request: pytest.FixtureRequest, tmp_path: Path):
    """The backend named by TBPS_INDEX_BACKEND (default faiss), empty, for the search suite."""
    name = os.environ.get("TBPS_INDEX_BACKEND", "faiss")
    if name == "milvus":
        return request.getfixturevalue("milvus_backend")
    from indexer.backends import BackendUnavailable, create_backend

    try:
        return create_backend(name, root=tmp_path / "index")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
