"""Where FastAPI's generated OpenAPI cannot say what a route does, say it here.

DELETE /admin/crops needs at least one of camera, time_from, time_to. Three optional query
parameters cannot express that; one exploded form-style object parameter with
``minProperties: 1`` can, and it is sent exactly as before (``?camera=...&time_to=...``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.api.schemas import LABEL_PATTERN

RANGE_FILTERS = ("camera", "time_from", "time_to")


def _range_parameter(params: list[dict[str, Any]]) -> dict[str, Any]:
    props = {p["name"]: {"type": "string", **{k: v for k, v in p["schema"]["anyOf"][0].items()}}
             for p in params if p["name"] in RANGE_FILTERS}
    props["camera"].update(minLength=1, pattern=LABEL_PATTERN)
    return {"name": "filters", "in": "query", "required": True, "style": "form", "explode": True,
            "description": "At least one of camera, time_from, time_to (ISO 8601); each is "
            "its own query parameter: ?camera=gate-3&time_to=2026-02-01T00:00:00Z",
            "schema": {"type": "object", "properties": props, "minProperties": 1,
                       "additionalProperties": False,
                       "examples": [{"camera": "gate-3", "time_to": "2026-02-01T00:00:00Z"}]}}


def describe(app: FastAPI) -> None:
    """Install the corrected schema generator on ``app``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            op = spec["paths"]["/admin/crops"]["delete"]
            keep = [p for p in op["parameters"] if p["name"] not in RANGE_FILTERS]
            op["parameters"] = keep + [_range_parameter(op["parameters"])]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
