"""Settings validated at start-up: no default secrets outside development."""

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
