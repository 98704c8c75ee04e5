"""The OpenAPI contract: every field documented with an example, and a bounded schemathesis run
(admin key included) that finds no 5xx and no response breaking the schema."""

from __future__ import annotations

import unicodedata
import zlib
from datetime import UTC, datetime

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi import checks as openapi_checks

from service.config import Settings
from service.jobs.index_backend import backend_from_settings
from service.jobs.index_jobs import build_full
from service.jobs.ingest import ingest_folder
from service.main import create_app
from service.store.db import migrate, session_scope
from tests.conftest import backend_settings, make_image

KEY = "schemathesis-key-0123456789"
MAX_EXAMPLES = 6  # per operation and mode: keeps the run to seconds
CHECKS = CHECK_REGISTRY.get_all()  # --checks all (the OpenAPI ones register on import)
assert openapi_checks.negative_data_rejection in CHECKS
POSITIVE_CHECKS = [c for c in CHECKS if c is not openapi_checks.negative_data_rejection]
IMAGE_UPLOADS = ("POST /admin/crops", "POST /search/image")


@pytest.fixture(scope="module")
def served_app(request, tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("openapi")
    gallery = root / "gallery" / "cam-a"
    gallery.mkdir(parents=True)
    for i in range(8):
        (gallery / f"p{i}.png").write_bytes(make_image(i))
    s = Settings(data_dir=root / "data", environment="test", device="cpu", admin_keys=KEY,
                 **backend_settings(request))
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    backend = backend_from_settings(s)  # FAISS files, or Milvus under TBPS_INDEX_BACKEND=milvus
    with session_scope(s.resolved_database_url) as session:
        ingest_folder(session, s, root / "gallery")
    with session_scope(s.resolved_database_url) as session:
        build_full(session, tiny_encoder, s.resolved_crops_dir, backend)
    app = create_app(s, encoder=tiny_encoder)
    with TestClient(app):  # runs the lifespan: model and index loaded into app.state
        yield app
    if s.index_backend == "milvus":
        backend.drop_all()
        backend.close()


@pytest.fixture(scope="module")
def api_schema(served_app):
    return schemathesis.openapi.from_asgi("/openapi.json", served_app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_honours_its_schema(api_schema, mode):
    """Each operation in turn, with hypothesis driving schemathesis' strategy for it: valid
    requests must be accepted, invalid ones refused, every answer as documented."""
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        strategy = operation.as_strategy(generation_mode=mode)
        if mode == GenerationMode.POSITIVE:
            strategy = strategy.map(_meaningful)

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            # real images in multipart parts read back to schemathesis as a changed, "invalid"
            # body: the negative check does not apply to these positive cases
            images = mode == GenerationMode.POSITIVE and case.operation.label in IMAGE_UPLOADS
            checks = POSITIVE_CHECKS if images else CHECKS
            case.call_and_validate(headers=_auth(case), checks=checks)

        try:
            check()
        except Unsatisfiable:  # no parameter to make invalid: nothing to send in this mode
            assert mode == GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
            failures.append(f"{operation.label}: {_summary(exc)}")
    assert failures == [], "\n\n".join(failures)


def _auth(case) -> dict[str, str]:
    """The admin key, unless this negative case took the header away on purpose."""
    negated = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    return {} if negated else {"X-API-Key": KEY}


def _meaningful(case):
    """Valid data the schema cannot describe: uploaded files are real images (the schema says
    "bytes", the service decodes them), a cursor is one the service issued (none here), a
    camera filter names cameras the gallery has, a time range is in order, a description is not
    blank, and an index factory is one FAISS can build. Refusing random bytes (422), unknown
    cursors (400), unknown or no cameras (422), reversed ranges and blank descriptions (422)
    and factories FAISS cannot build (422) is tested in test_admin/test_search."""
    body = case.body if isinstance(case.body, dict) else None
    if body and case.operation.label == "POST /admin/crops" and "files" in body:
        files = body["files"] if isinstance(body["files"], list) else [body["files"]]
        body["files"] = [make_image(zlib.crc32(f if isinstance(f, bytes) else str(f).encode()))
                         for f in files]
    if body and case.operation.label == "POST /admin/reindex" and body.get("factory"):
        body["factory"] = "IVF4,Flat"  # one FAISS can build; refusing others: test_admin
    if body and case.operation.label == "POST /search/image" and "image" in body:
        body["image"] = make_image(zlib.crc32(body["image"] if isinstance(body["image"], bytes)
                                              else str(body["image"]).encode()))
    if body and case.operation.label in ("POST /search", "POST /search/image"):
        body.pop("cursor", None)
        if body.get("cameras") is not None:
            body["cameras"] = ["cam-a"]
        if isinstance(body.get("description"), str) and _blank(body["description"]):
            body["description"] = "a person"  # a blank one is a 422 (test_search)
        if body.get("time_from") and body.get("time_to"):  # a reversed range is a 422
            body["time_from"], body["time_to"] = sorted([body["time_from"], body["time_to"]],
                                                        key=_instant)
    return case


def _blank(text: str) -> bool:
    """What the service calls a blank description: only spaces, control and format chars."""
    return all(unicodedata.category(c) in ("Cc", "Cf") or c.isspace() for c in text)


def _instant(value: str) -> datetime:
    """An ISO time as the service reads it (no zone: UTC)."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _summary(exc: BaseException) -> str:
    """The failure titles and their first lines (the full report is long)."""
    inner = getattr(exc, "exceptions", None) or [exc]
    return " | ".join(str(e).strip().splitlines()[0] + " " + " ".join(
        line.strip() for line in str(e).splitlines()[1:30] if line.strip()) for e in inner)


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
