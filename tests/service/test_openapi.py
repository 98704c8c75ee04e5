"""The OpenAPI contract: every field documented with an example, and a bounded schemathesis run
(admin key included) that finds no 5xx and no response breaking the schema."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from indexer.jobs import build_full
from service.config import Settings
from service.db import migrate, session_scope
from service.ingest import ingest_folder
from service.main import create_app
from tests.conftest import make_image

KEY = "schemathesis-key-0123456789"
MAX_EXAMPLES = 12  # per operation: bounds the run to well under a minute
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance,
          status_code_conformance]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("openapi")
    gallery = root / "gallery" / "cam-a"
    gallery.mkdir(parents=True)
    for i in range(8):
        (gallery / f"p{i}.png").write_bytes(make_image(i))
    s = Settings(data_dir=root / "data", environment="test", device="cpu", admin_keys=KEY)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, root / "gallery")
    with session_scope(s.resolved_database_url) as session:
        build_full(session, tiny_encoder, s.resolved_crops_dir, s.resolved_index_dir)
    app = create_app(s, encoder=tiny_encoder)
    with TestClient(app):  # runs the lifespan: model and index loaded into app.state
        yield app


@pytest.fixture(scope="module")
def api_schema(served_app):
    return schemathesis.openapi.from_asgi("/openapi.json", served_app)


def test_api_honours_its_schema(api_schema):
    """Each operation in turn, with hypothesis driving schemathesis' strategy for it."""
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)


def _fields(schema_: dict, defs: dict):
    yield from schema_.get("properties", {}).items()
    for sub in schema_.get("allOf", []) + schema_.get("anyOf", []):
        if "$ref" in sub:
            yield from _fields(defs[sub["$ref"].rsplit("/", 1)[-1]], defs)


def _nested(prop: dict) -> bool:
    """A model or a list of them: documented where that model is."""
    options = prop.get("anyOf", [prop])
    return any("$ref" in o or o.get("type") in ("array", "object") for o in options)


def test_every_field_is_documented_with_an_example(served_app):
    spec = TestClient(served_app).get("/openapi.json").json()
    defs = spec["components"]["schemas"]
    missing = [f"{model}.{name}" for model, body in defs.items()
               if model not in ("HTTPValidationError", "ValidationError")
               and not model.startswith("Body_")
               for name, prop in _fields(body, defs)
               if "examples" not in prop and not _nested(prop)]
    assert missing == []
    upload = spec["paths"]["/admin/crops"]["post"]
    assert upload["requestBody"]["content"]["multipart/form-data"]
