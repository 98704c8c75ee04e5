"""Settings validated at start-up: no default secrets outside development."""

import socket

import pytest
from pydantic import ValidationError

from service.config import Settings, hash_key


def test_production_needs_real_keys():
    with pytest.raises(ValidationError, match="must be set in production"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="default or short key"):
        Settings(environment="production", admin_keys="changethis")
    ok = Settings(environment="production", admin_keys="k" * 32)
    assert ok.admin_key_digests == {hash_key("k" * 32)}
    assert Settings(environment="production", admin_key_hashes="AB" * 32).admin_key_digests == {
        "ab" * 32}


def test_development_runs_without_keys():
    assert Settings(environment="development").admin_key_digests == frozenset()


def test_milvus_needs_a_server_address(monkeypatch):
    monkeypatch.delenv("TBPS_MILVUS_URI", raising=False)
    with pytest.raises(ValidationError, match="TBPS_MILVUS_URI"):
        Settings(index_backend="milvus")
    with pytest.raises(ValidationError, match="not an http"):
        Settings(index_backend="milvus", milvus_uri="milvus:19530")
    with pytest.raises(ValidationError, match="milvus_prefix"):
        Settings(index_backend="milvus", milvus_uri="http://m:19530", milvus_prefix="a-b")
    ok = Settings(index_backend="milvus", milvus_uri="http://m:19530", milvus_token="u:p")
    assert "u:p" not in repr(ok)


def test_an_unreachable_milvus_is_a_clear_error_naming_the_setting(tmp_path):
    pytest.importorskip("pymilvus", reason="the scale extra")
    from indexer.backends import BackendUnavailable
    from service.jobs.index_backend import backend_from_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path, index_backend="milvus", milvus_timeout=1,
                        milvus_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnavailable, match=f"TBPS_MILVUS_URI=http://127.0.0.1:{port}"):
        backend_from_settings(settings)
