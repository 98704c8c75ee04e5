"""The search filters, one ``FilterSpec`` each: the single place a filter is defined.

A spec names the crop attribute it reads (``indexer.filters.ATTRIBUTES``; its column in the
crops table is in ``CROP_COLUMNS``), its request fields with their validation (they become
fields of ``POST /search``, form fields of ``POST /search/image`` and flags of ``tbps search``),
and how the request's values become an engine condition (``indexer.filters.InSet``/``Range``).
The catalog evaluates the conditions as a numpy mask; a backend that stores the attribute
(Milvus) evaluates the same conditions as a boolean expression. No FastAPI imports here.

Adding a filter: its attribute in ``indexer.filters.ATTRIBUTES``, its column in
``CROP_COLUMNS`` and its spec in ``FILTERS`` (and, if wanted, a field in the web page's form).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.fields import FieldInfo

from indexer.filters import Condition, InSet, Range, SearchFilter


class Catalog(Protocol):
    """What a filter's condition may ask of the catalog (``service.search.catalog.Catalog``)."""

    cameras: dict[str, int]  # name -> cameras.id

__all__ = ["CROP_COLUMNS", "FILTERS", "CropColumn", "FilterRejected", "FilterSpec",
           "UTCDateTime", "json_integer", "search_filter", "to_epoch"]


def _aware(value: datetime) -> datetime:
    """Times without a zone are UTC (SQLite returns them so); every time leaves as UTC. A time
    that has no UTC equivalent (9999-12-31T23:59:59-14:00) is a validation error, not a 500."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range once converted to UTC (years 1-9999)") from None


_EPOCH = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")


def _not_epoch(value: object) -> object:
    """ISO 8601 only: pydantic would read 0, -1 or "1780000000" as unix times (1970, 1969)."""
    if isinstance(value, int | float) or (isinstance(value, str) and _EPOCH.fullmatch(value)):
        raise ValueError("give an ISO 8601 time such as 2026-05-01T08:00:00Z, not a number "
                         "(epoch seconds are not read as times)")
    return value


UTCDateTime = Annotated[datetime, BeforeValidator(_not_epoch), AfterValidator(_aware)]

def json_integer(value: object) -> object:
    """Numbers only: "5" and true are refused (lax ints would take them); 5.0 is an integer
    in JSON Schema and stays accepted."""
    if isinstance(value, bool | str):
        raise ValueError("give a JSON number, not a string or a boolean")
    return value


def to_epoch(value: datetime) -> float:
    """Seconds since the epoch; naive datetimes are UTC (how the database stores them)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class FilterRejected(ValueError):
    """A filter value the request schema cannot judge alone (an unknown camera name): the
    route answers 422 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CropColumn:
    """Where an attribute comes from: a crops-table column and its value -> the attribute's
    value (None: the attribute's unknown)."""

    attribute: str
    column: str  # the name of a service.store.orm.Crop column (no ORM import: the CLI's flags)
    value: Callable[[Any], float]


CROP_COLUMNS: tuple[CropColumn, ...] = (
    CropColumn("camera_id", "camera_id", lambda v: -1 if v is None else int(v)),
    CropColumn("ts", "captured_at", lambda v: np.nan if v is None else to_epoch(v)),
    CropColumn("height", "height", lambda v: -1 if v is None else int(v)),
)


@dataclass(frozen=True)
class CliFlag:
    """A ``tbps search`` flag for one request field (argparse keyword arguments)."""

    flag: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterSpec:
    """One search filter: the attribute it reads, its request fields (name -> (annotation,
    pydantic Field)), a check across its fields, and its values -> an engine condition."""

    name: str
    attribute: str
    fields: dict[str, tuple[Any, FieldInfo]]
    condition: Callable[[Mapping[str, Any], Catalog], Condition]
    check: Callable[[Mapping[str, Any]], None] | None = None  # ValueError: 422
    cli: dict[str, CliFlag] = field(default_factory=dict)  # request field -> flag
    # request field -> its type as a form field (a string parsed), where the JSON one is
    # stricter (numbers that must not come as strings)
    form: dict[str, Any] = field(default_factory=dict)

    def form_type(self, name: str) -> Any:
        return self.form.get(name, self.fields[name][0])

    def given(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """This filter's fields among ``values`` that are set."""
        return {k: values[k] for k in self.fields if values.get(k) is not None}


# ---- cameras ----
def _camera_names(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("cameras is empty, which would match nothing: omit it to search "
                         "every camera")
    return value


def _cameras(values: Mapping[str, Any], catalog: Catalog) -> Condition:
    unknown = sorted(set(values["cameras"]) - set(catalog.cameras))
    if unknown:
        known = ", ".join(sorted(catalog.cameras)[:20]) or "none yet"
        raise FilterRejected("cameras", f"no camera named {', '.join(map(repr, unknown))}; the "
                             f"gallery's cameras are: {known} (GET /cameras)")
    return InSet("camera_id", frozenset(catalog.cameras[n] for n in values["cameras"]))


# ---- capture time ----
def _time_range(values: Mapping[str, Any], _catalog: Catalog) -> Condition:
    start, end = values.get("time_from"), values.get("time_to")
    return Range("ts", to_epoch(start) if start else None, to_epoch(end) if end else None)


def _ordered(values: Mapping[str, Any]) -> None:
    start, end = values.get("time_from"), values.get("time_to")
    if start and end and _aware(start) > _aware(end):
        raise ValueError("time_from is after time_to")


def _time_field(which: str, bound: str) -> tuple[Any, FieldInfo]:
    return (UTCDateTime | None, Field(None, description=f"Only crops captured at or {bound} "
                                      "this time (ISO 8601; no zone means UTC).",
                                      examples=[f"2026-05-01T{which}:00:00Z"]))


MAX_HEIGHT = 100_000


def _filters() -> tuple[FilterSpec, ...]:
    return (
        FilterSpec("cameras", "camera_id", {"cameras": (
            Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]],
                      AfterValidator(_camera_names)] | None,
            Field(None, max_length=100, description="Only crops from these cameras (by name; GET "
                  "/cameras lists them). An unknown name or an empty list is refused (422). "
                  "Omit for every camera.", examples=[["gate-3", "lobby"]]))},
            _cameras, cli={"cameras": CliFlag("--camera", {
                "action": "append", "metavar": "NAME", "help": "only this camera (repeatable)"})}),
        FilterSpec("time", "ts", {"time_from": _time_field("08", "after"),
                                  "time_to": _time_field("18", "before")},
                   _time_range, check=_ordered),
        FilterSpec("min_height", "height", {"min_height": (
            Annotated[int, Field(ge=1, le=MAX_HEIGHT), BeforeValidator(json_integer)] | None,
            Field(None, examples=[128],
                              description="Only crops at least this many pixels high (smaller "
                              "ones are too small to judge); a whole number, 1-100000."))},
            lambda v, _c: Range("height", low=v["min_height"]),
            form={"min_height": Annotated[int, Field(ge=1, le=MAX_HEIGHT)] | None},
            cli={"min_height": CliFlag("--min-height", {
                "type": int, "metavar": "PIXELS",
                "help": "only crops at least this many pixels high"})}),
    )


FILTERS: tuple[FilterSpec, ...] = _filters()


def search_filter(values: Mapping[str, Any], catalog: Catalog) -> SearchFilter | None:
    """The engine filter for a request's filter values (None when no filter is set);
    ``FilterRejected`` for a value the catalog refutes."""
    conditions = tuple(spec.condition(given, catalog) for spec in FILTERS
                       if (given := spec.given(values)))
    return SearchFilter(conditions) if conditions else None
