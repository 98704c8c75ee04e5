"""Index backends for the backend tests: Milvus backends on the real server of the session
(``tests.conftest.milvus_uri``), and the backend the search suite runs against, chosen by
``TBPS_INDEX_BACKEND`` (faiss by default); the ``tbps`` command run in this process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.cli.main import main
from service.config import get_settings
from tests.conftest import milvus_prefix


@pytest.fixture
def milvus_backend(milvus_uri: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A Milvus backend with a prefix of its own (one test's collections), dropped after."""
    from indexer.backends.milvus_backend import MilvusBackend

    backend = MilvusBackend(root=tmp_path / "work", uri=milvus_uri,
                            prefix=milvus_prefix(request))
    yield backend
    backend.drop_all()
    backend.close()


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


@pytest.fixture
def tbps(tmp_path, monkeypatch, capsys):
    """``tbps ARGS`` in this process on a data dir of the test's own -> (exit code, stdout)."""
    monkeypatch.setenv("TBPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TBPS_DEVICE", "cpu")
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().out

    yield run
    get_settings.cache_clear()
