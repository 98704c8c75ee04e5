"""What an index job does, as data: the state of the catalog and the live index in, the steps
out. ``plan`` is a pure function (no database, no files): ``service.jobs.index_jobs`` reads the
state, runs the steps in one loop, and plans again after a full build (crops added while it
ran) or when another process built the first index meanwhile.

Goals: ``full`` (rebuild everything), ``sync`` (bring the index up to date: the default of
``tbps index``), ``add`` (make given crops searchable; the whole gallery when there is no
index yet, published chunk by chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from indexer.backends.base import CorruptIndex
from indexer.jobs import COMPACT_GENERATIONS, StaleIndex, chunk_bounds
from indexer.spec import choose_spec

Goal = Literal["full", "sync", "add"]
# full: encode every crop into a new version and swap it in; first: the first index of the
# gallery, chunk by chunk; mark: record crops the index holds as indexed; remove: drop crops
# from the live version; add: encode crops into it; compact: merge its generations
Action = Literal["full", "first", "mark", "remove", "add", "compact"]


@dataclass(frozen=True)
class IndexState:
    """The live index against the catalog, as far as a plan needs it."""

    live: str | None = None  # the live pointer, None when no index is published
    refused: str | None = None  # why the live version cannot be added to (corrupt, gone)
    resumable: bool = False  # a killed full build by this checkpoint is left to resume
    built_by_other: str | None = None  # the checkpoint sha that built it, when not this one
    other_factory: bool = False  # a spec other than the live one's is asked for
    generations: int = 0  # of the live version
    to_add: tuple[int, ...] = ()  # crops to encode into the live version
    to_remove: tuple[int, ...] = ()  # crop ids to drop from it
    settled: tuple[int, ...] = ()  # crops it holds that the catalog calls pending or failed
    gallery: int = 0  # crops a first build encodes (read when there is no index)


@dataclass(frozen=True)
class Step:
    action: Action
    ids: tuple[int, ...] = ()  # the crops of mark / remove / add


def plan(state: IndexState, goal: Goal = "sync", *, rebuilt: bool = False) -> list[Step]:
    """The steps that reach ``goal`` from ``state``. ``rebuilt``: a full build has just run
    in this job, so none is planned again (a live version still unusable is an error)."""
    if goal == "full":
        return [Step("full")]
    if state.live is None:
        if rebuilt:
            return []
        return _first(state) if goal == "add" else [Step("full")]
    if state.refused is not None:
        if rebuilt:
            raise CorruptIndex(f"{state.refused}; a full rebuild just published it: check the "
                               "model and the disk, then `tbps index --full`")
        return [Step("full")]
    if goal == "sync" and not rebuilt and (state.resumable or state.built_by_other
                                           or state.other_factory):
        return [Step("full")]
    if state.built_by_other:
        raise StaleIndex(f"the live index {state.live} was built by checkpoint "
                         f"{state.built_by_other}; run `tbps index --full` with the current one")
    if goal == "add":
        return [Step("add", state.to_add)]
    return _catch_up(state)


def _first(state: IndexState) -> list[Step]:
    """A first build; a gallery too large for exact search is compacted into its spec."""
    large = state.gallery and not choose_spec(state.gallery).exact
    return [Step("first")] + ([Step("compact")] if large else [])


def _catch_up(state: IndexState) -> list[Step]:
    """Record, drop and add what differs; compact when the generations published on top of
    the live ones pass ``COMPACT_GENERATIONS``."""
    steps = [Step("mark", state.settled)] if state.settled else []
    if state.to_remove:
        steps.append(Step("remove", state.to_remove))
    steps.append(Step("add", state.to_add))
    generations = (state.generations + bool(state.to_remove)
                   + len(chunk_bounds(len(state.to_add))))
    if generations > COMPACT_GENERATIONS:
        steps.append(Step("compact"))
    return steps


__all__ = ["Action", "Goal", "IndexState", "Step", "plan"]
