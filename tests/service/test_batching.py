"""Micro-batched search: the queue itself, and batched searches equal to one-at-a-time ones."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from service.jobs.index_backend import backend_from_settings
from service.search import engine as search_module
from service.search.batching import MicroBatcher
from service.search.engine import SearchEngine, SearchQuery
from service.store.db import session_scope
from tests.service.conftest import T0


def _backend(settings):
    """The gallery's backend (FAISS files, or Milvus with TBPS_INDEX_BACKEND=milvus)."""
    return backend_from_settings(settings, for_search=True)


def _gathered(batcher: MicroBatcher, items: list, timeout: float = 30) -> list:
    """Submit every item from its own thread while one slot is held open, so that all of
    them wait in the queue (or have already run in full batches of ``max_batch``); then
    release the slot: the rest run as one batch."""
    with ThreadPoolExecutor(len(items)) as pool, batcher.coming():
        futures = [pool.submit(batcher.submit, item) for item in items]
        deadline = time.monotonic() + timeout
        while batcher.pending + batcher.items < len(items) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert time.monotonic() < deadline, "the items never all reached the queue"
    return [f.result() for f in futures]


def test_announced_items_run_as_one_batch_each_with_its_own_result():
    seen: list[list[int]] = []
    batcher = MicroBatcher(lambda xs: seen.append(xs) or [x * 10 for x in xs], window_s=30)
    assert _gathered(batcher, list(range(6))) == [0, 10, 20, 30, 40, 50]
    assert len(seen) == 1 and sorted(seen[0]) == list(range(6))
    assert (batcher.batches, batcher.items) == (1, 6)
    batcher.close()


def test_max_batch_splits_the_queue():
    sizes: list[int] = []
    batcher = MicroBatcher(lambda xs: sizes.append(len(xs)) or xs, max_batch=4, window_s=30)
    assert _gathered(batcher, list(range(10))) == list(range(10))
    assert max(sizes) <= 4 and sum(sizes) == 10
    batcher.close()


def test_a_lone_caller_does_not_wait_for_the_window():
    batcher = MicroBatcher(lambda xs: xs, window_s=5.0)
    started = time.monotonic()
    with batcher.coming() as slot:
        assert slot.submit("alone") == "alone"
    assert batcher.submit("plain") == "plain"
    assert time.monotonic() - started < 1.0  # nobody else announced: no 5 s wait
    with batcher.coming() as slot:
        slot.submit(1)
        with pytest.raises(RuntimeError, match="one item"):
            slot.submit(2)
    batcher.close()


def test_an_error_reaches_every_caller_of_the_batch_and_the_next_batch_still_runs():
    def run(xs):
        if "bad" in xs:
            raise ValueError("no thanks")
        return xs

    batcher = MicroBatcher(run, window_s=30)
    with ThreadPoolExecutor(3) as pool, batcher.coming():
        futures = [pool.submit(batcher.submit, x) for x in ("a", "bad", "c")]
        while batcher.pending < 3:
            time.sleep(0.01)
    for f in futures:
        with pytest.raises(ValueError, match="no thanks"):
            f.result()
    assert batcher.submit("d") == "d"
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("e")


def test_wrong_result_count_and_bad_settings_are_refused():
    batcher = MicroBatcher(lambda xs: [], window_s=0)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        batcher.submit(1)
    batcher.close()
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, max_batch=0)


def _queries(cursor: str) -> list[SearchQuery]:
    day = T0 + timedelta(hours=2)
    return [
        SearchQuery("a person in a red shirt", top_k=5),
        SearchQuery("a person in a red shirt", top_k=3),  # same text, another k
        SearchQuery("a man with a blue bag", top_k=12),
        SearchQuery("someone", top_k=4, filters={"cameras": ["cam-1"]}),
        SearchQuery("someone", top_k=4, filters={"cameras": ["cam-0", "cam-2"],
                                                 "time_from": day}),
        SearchQuery("a woman walking", top_k=2, group_by="person"),
        SearchQuery("a person in a red shirt", top_k=4, cursor=cursor),
    ]


def _cursor(result) -> dict | None:
    if result.next_cursor is None:
        return None
    raw = base64.urlsafe_b64decode(result.next_cursor + "=" * (-len(result.next_cursor) % 4))
    return json.loads(raw)


def _same(got, want) -> None:
    """The same hits in the same order; scores (and the cursor's) equal to float noise: a
    query's vector differs in the last bits when encoded in a batch."""
    assert (got.index_version, got.matching) == (want.index_version, want.matching)
    c_got, c_want = _cursor(got), _cursor(want)
    assert (c_got is None) == (c_want is None)
    if c_got is not None:
        assert c_got["k"][1] == c_want["k"][1] and c_got["n"] == c_want["n"]
        assert abs(c_got["k"][0] - c_want["k"][0]) < 1e-5
    pairs = [(h.crop_id, h.score) for h in got.hits]
    assert [i for i, _ in pairs] == [h.crop_id for h in want.hits]
    np.testing.assert_allclose([s for _, s in pairs], [h.score for h in want.hits], atol=1e-5)
    assert [(p.person_id, [c.crop_id for c in p.crops]) for p in got.persons] == [
        (p.person_id, [c.crop_id for c in p.crops]) for p in want.persons]


@pytest.mark.parametrize("overfetch", [search_module.OVERFETCH_LIMIT, 0])
def test_batched_searches_equal_one_at_a_time(shared_api, shared_gallery, tiny_encoder,
                                              monkeypatch, overfetch):
    """Overfetch 0 sends every filtered query down the allowed-ids path (searched alone)."""
    monkeypatch.setattr(search_module, "OVERFETCH_LIMIT", overfetch)
    url = shared_gallery.resolved_database_url
    alone = SearchEngine(tiny_encoder, _backend(shared_gallery), shared_gallery.data_dir)
    batched = SearchEngine(tiny_encoder, _backend(shared_gallery), shared_gallery.data_dir,
                           batch_max=32, batch_window_ms=30_000)
    with session_scope(url) as session:
        first = alone.search(session, SearchQuery("a person in a red shirt", top_k=4))
        queries = _queries(first.next_cursor)
        want = [alone.search(session, q) for q in queries]

    def one(query: SearchQuery):
        with session_scope(url) as session:
            return batched.search(session, query)

    got = _gathered(_Adapter(batched, one), queries)
    assert batched.batcher.batches == 1 and batched.batcher.items == len(queries)
    for g, w in zip(got, want, strict=True):
        _same(g, w)
    # the page after the cursor continues the first one, batched or not
    assert {h.crop_id for h in first.hits}.isdisjoint(h.crop_id for h in got[-1].hits)
    batched.close()


class _Adapter:
    """Drives ``_gathered`` with whole searches: their probes wait in the engine's queue."""

    def __init__(self, engine: SearchEngine, fn) -> None:
        self.engine, self.fn = engine, fn

    @property
    def pending(self) -> int:
        return self.engine.batcher.pending

    @property
    def items(self) -> int:
        return self.engine.batcher.items

    def coming(self):
        return self.engine.batcher.coming()

    def submit(self, query: SearchQuery):
        return self.fn(query)


def test_a_search_that_fails_before_its_probe_leaves_no_one_waiting(shared_api, shared_gallery,
                                                                    tiny_encoder):
    """A bad cursor is refused inside the announced slot; the slot is given back, so the
    next lone search does not wait out the (here 5 s) window for it."""
    engine = SearchEngine(tiny_encoder, _backend(shared_gallery), shared_gallery.data_dir,
                          batch_max=8, batch_window_ms=5000)
    query = SearchQuery("a person in a red shirt", top_k=3)
    with session_scope(shared_gallery.resolved_database_url) as session:
        good = engine.search(session, query)
        with pytest.raises(search_module.BadCursor):
            engine.search(session, replace(query, cursor="x" * 8))
        started = time.monotonic()
        again = engine.search(session, query)
    assert time.monotonic() - started < 2.0
    assert [h.crop_id for h in again.hits] == [h.crop_id for h in good.hits]
    assert engine.batcher.items == 2
    engine.close()


def test_the_api_batches_concurrent_requests(shared_api):
    engine = shared_api.app.state.engine
    assert engine.batcher is not None and engine.batcher.max_batch == 32
    before = engine.batcher.items
    results: list[int] = []

    def post() -> None:
        r = shared_api.post("/search", json={"description": "a person in a red shirt", "top_k": 3})
        results.append(r.status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6 and engine.batcher.items - before == 6


@pytest.mark.parametrize("nudge", [-1e-6, 1e-6])
@pytest.mark.parametrize("group_by", ["crop", "person"])
def test_a_cursor_whose_score_moved_in_the_last_bits_neither_repeats_nor_skips(
        shared_api, shared_gallery, tiny_encoder, nudge, group_by):
    """Page 2's encoding may score the last crop shown a hair apart from page 1's."""
    engine = SearchEngine(tiny_encoder, _backend(shared_gallery), shared_gallery.data_dir)
    query = SearchQuery("a person in a red shirt", top_k=2, group_by=group_by)
    with session_scope(shared_gallery.resolved_database_url) as session:
        first = engine.search(session, query)
        data = _cursor(first)
        cursor = search_module.encode_cursor(version=data["v"], fingerprint=data["f"],
                                             seen=data["n"], key=[data["k"][0] + nudge,
                                                                  data["k"][1]],
                                             max_id=data["m"])
        second = engine.search(session, replace(query, cursor=cursor))
        both = engine.search(session, replace(query, top_k=4))
    key = (lambda r: [h.crop_id for h in r.hits]) if group_by == "crop" else (
        lambda r: [p.person_id for p in r.persons])
    assert key(first) + key(second) == key(both)


def test_probes_on_one_version_share_one_index_call_whatever_view_object_holds_it():
    """Milvus opens a new view per request: the pointer, not the object, groups the probes."""
    from indexer.backends import Hits
    from service.search.query_batch import Probe, run_probes

    class View:
        calls: list[int] = []

        def __init__(self, version: str) -> None:
            self.version = version

        def search(self, queries, k, *, filter=None, allowed_ids=None):
            View.calls.append(len(queries))
            scores = np.repeat(queries[:, :1], k, axis=1)  # (Q, k)
            return Hits(scores, np.tile(np.arange(k), (len(queries), 1)), self.version)

    class Encoder:
        def encode_text(self, texts):
            return np.array([[float(len(t)), 0.0] for t in texts], np.float32)  # (B, 2)

    probes = [Probe(View("v1"), "ab", 3), Probe(View("v1"), "abc", 3),
              Probe(View("v1"), "abcd", 3, allowed_ids=np.array([1])), Probe(View("v2"), "a", 3)]
    out = run_probes(Encoder(), probes)
    assert sorted(View.calls) == [1, 1, 2]
    assert [float(p.scores[0, 0]) for p in out] == [2.0, 3.0, 4.0, 1.0]
    assert all(p.ids.shape == (1, 3) and p.qvec.shape == (1, 2) for p in out)
