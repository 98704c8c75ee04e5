"""The plan of an index job: states of the catalog and the live index in, steps out (written
out by hand here, not computed by the code under test)."""

import pytest

from indexer.backends.base import CorruptIndex
from indexer.jobs import COMPACT_GENERATIONS, StaleIndex
from indexer.spec import FLAT_MAX
from service.jobs.index_plan import IndexState, Step, plan

LIVE = IndexState(live="20260101T000000Z+3", generations=3)


def actions(steps):
    return [(s.action, s.ids) for s in steps]


@pytest.mark.parametrize(("state", "goal", "expected"), [
    # a full build is asked for: nothing else is looked at
    (LIVE, "full", [("full", ())]),
    (IndexState(refused="corrupt"), "full", [("full", ())]),
    # no index yet: tbps index builds in full, an add job publishes the gallery chunk by chunk
    (IndexState(), "sync", [("full", ())]),
    (IndexState(gallery=40), "add", [("first", ())]),
    # a first build too large for exact search ends with a compaction into its spec
    (IndexState(gallery=FLAT_MAX + 1), "add", [("first", ()), ("compact", ())]),
    # a corrupt or vanished live version is rebuilt, whatever the goal
    (IndexState(live="v", refused="corrupt: ids.npy is gone"), "sync", [("full", ())]),
    (IndexState(live="v", refused="corrupt: ids.npy is gone", to_add=(1,)), "add",
     [("full", ())]),
    # sync: a killed full build to resume, another checkpoint or another spec -> full
    (IndexState(live="v", resumable=True), "sync", [("full", ())]),
    (IndexState(live="v", built_by_other="abc"), "sync", [("full", ())]),
    (IndexState(live="v", other_factory=True), "sync", [("full", ())]),
    # an add job adds the crops it was given (another spec asked does not matter to it)
    (IndexState(live="v", other_factory=True, to_add=(7, 8)), "add", [("add", (7, 8))]),
    # sync of an index that can be added to: record, drop, add
    (IndexState(live="v", to_add=(5,), to_remove=(2, 3), settled=(4,)), "sync",
     [("mark", (4,)), ("remove", (2, 3)), ("add", (5,))]),
    (IndexState(live="v"), "sync", [("add", ())]),
])
def test_plan(state, goal, expected):
    assert actions(plan(state, goal)) == expected


def test_sync_compacts_when_the_generations_would_pass_the_limit():
    # one tombstone generation and one chunk of added crops on top of the live ones
    near = IndexState(live="v", generations=COMPACT_GENERATIONS - 2, to_add=(1,),
                      to_remove=(9,))
    assert actions(plan(near, "sync")) == [("remove", (9,)), ("add", (1,))]
    over = IndexState(live="v", generations=COMPACT_GENERATIONS - 1, to_add=(1,),
                      to_remove=(9,))
    assert actions(plan(over, "sync"))[-1] == ("compact", ())


def test_after_a_full_build_no_second_one_is_planned():
    """The catch-up after a full build in the same job: crops uploaded meanwhile are added; a
    version still unusable is an error, not a loop of rebuilds."""
    assert plan(IndexState(live="v", resumable=True, to_add=(3,)), "sync", rebuilt=True) == [
        Step("add", (3,))]
    assert plan(IndexState(), "sync", rebuilt=True) == []
    with pytest.raises(CorruptIndex, match="full rebuild just published it"):
        plan(IndexState(live="v", refused="corrupt: no manifest"), "sync", rebuilt=True)


def test_adding_to_an_index_of_another_checkpoint_is_refused():
    with pytest.raises(StaleIndex, match="built by checkpoint abc"):
        plan(IndexState(live="v+2", built_by_other="abc", to_add=(1,)), "add")
