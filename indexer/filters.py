"""Search filters as data: the per-crop attributes an index row may carry, and conditions on
them that evaluate both as a numpy mask (the reference, used by the service's catalog) and as a
Milvus boolean expression (evaluated inside the engine).

An ``Attribute`` is one column stored with each row by a backend that filters in its engine:
its name (the Milvus field, the key in ``Rows.attributes``), dtype, and the value standing for
"unknown" (NaN for times; Milvus stores no NaN, so ``stored_unknown`` replaces it there). A
``Condition`` reads one attribute: ``InSet`` (the value is one of these) or ``Range``
(inclusive bounds; an unknown value fails it). A ``SearchFilter`` is conditions that all hold.

Adding an attribute here is all a backend needs: the Milvus schema, payloads and expressions
are built from ``ATTRIBUTES``. What a search request asks for, and how it becomes conditions,
is the service's (``service.search.filters``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["ATTRIBUTES", "UNKNOWN_TIME", "Attribute", "Condition", "InSet", "Range",
           "SearchFilter", "attribute_arrays"]

UNKNOWN_TIME = -9007199254740992.0  # -2**53: Milvus stores no NaN; no real crop time is this


@dataclass(frozen=True)
class Attribute:
    """A per-crop value stored with each index row (for filters evaluated in the engine)."""

    name: str  # Rows.attributes key and Milvus field name
    dtype: str  # "int64" or "float64"
    unknown: float  # the value meaning unknown in arrays (-1, NaN)
    stored_unknown: float | None = None  # what the engine stores instead (None: ``unknown``)

    @property
    def milvus_type(self) -> str:
        return {"int64": "INT64", "float64": "DOUBLE"}[self.dtype]

    def stored(self, values: np.ndarray) -> np.ndarray:
        """Values as the engine stores them (unknown NaN replaced)."""
        values = np.asarray(values, self.dtype)
        if self.stored_unknown is None:
            return values
        return np.where(np.isnan(values), self.stored_unknown, values)

    def unknowns(self, n: int) -> np.ndarray:
        return np.full(n, self.unknown, self.dtype)


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("camera_id", "int64", -1),  # cameras.id
    Attribute("ts", "float64", np.nan, UNKNOWN_TIME),  # capture time, epoch seconds (UTC)
    Attribute("height", "int64", -1),  # crop height in pixels
)}


def attribute_arrays(n: int, given: Mapping[str, np.ndarray] | None,
                     names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every attribute in ``names`` (default: all) as an (n,) array: given ones cast to the
    attribute's dtype, missing ones filled with its unknown value."""
    given = given or {}
    return {name: (np.asarray(given[name], ATTRIBUTES[name].dtype) if name in given
                   else ATTRIBUTES[name].unknowns(n))
            for name in (names if names is not None else tuple(ATTRIBUTES))}


@dataclass(frozen=True)
class InSet:
    """The row's ``attribute`` is one of ``values`` (an empty set: nothing passes)."""

    attribute: str
    values: frozenset[int]

    def mask(self, column: np.ndarray) -> np.ndarray:
        return np.isin(column, np.fromiter(self.values, np.int64, len(self.values)))

    def expression(self) -> str | None:
        if not self.values:
            return None
        return f"{self.attribute} in {sorted(int(v) for v in self.values)}"


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (a None bound: no bound); a row with an unknown value fails."""

    attribute: str
    low: float | None = None
    high: float | None = None

    def mask(self, column: np.ndarray) -> np.ndarray:
        attr = ATTRIBUTES[self.attribute]
        keep = ~np.isnan(column) if np.isnan(attr.unknown) else column != attr.unknown
        if self.low is not None:
            keep &= column >= self.low  # NaN compares False
        if self.high is not None:
            keep &= column <= self.high
        return keep

    def expression(self) -> str:
        attr = ATTRIBUTES[self.attribute]
        unknown = attr.stored_unknown if attr.stored_unknown is not None else attr.unknown
        terms = [f"{self.attribute} != {_literal(unknown, attr)}"]
        if self.low is not None:
            terms.append(f"{self.attribute} >= {_literal(self.low, attr)}")
        if self.high is not None:
            terms.append(f"{self.attribute} <= {_literal(self.high, attr)}")
        return " and ".join(terms)


Condition = InSet | Range


def _literal(value: float, attr: Attribute) -> str:
    return str(int(value)) if attr.dtype == "int64" else f"{float(value):.6f}"


@dataclass(frozen=True)
class SearchFilter:
    """Which rows a search may return: every condition holds (none: every row)."""

    conditions: tuple[Condition, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.conditions

    @property
    def attributes(self) -> frozenset[str]:
        """The attributes the conditions read (an engine must store them all)."""
        return frozenset(c.attribute for c in self.conditions)

    def mask(self, attributes: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) bool for rows with these attribute columns (each (N,)): the reference
        semantics that engine-side filters must reproduce."""
        n = len(next(iter(attributes.values()))) if attributes else 0
        keep = np.ones(n, dtype=bool)
        for condition in self.conditions:
            keep &= condition.mask(attributes[condition.attribute])
        return keep

    def expression(self) -> str | None:
        """The Milvus boolean expression ("" when no condition); None when no row can pass
        (an empty set), which Milvus would reject as an expression."""
        terms = [c.expression() for c in self.conditions]
        if any(t is None for t in terms):
            return None
        return " and ".join(t for t in terms if t)
