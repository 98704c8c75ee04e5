"""How the suite runs on pytest-xdist workers (``make test``: ``-n 2 --dist loadgroup``).

Each worker is a process of its own with its own session fixtures: its own throwaway PostgreSQL
databases (uuid names), its own embedded Milvus when it runs a Milvus test (etcd on free ports:
indexer/backends/milvus_local.py), its own temporary folders. What is decided here, in the
workers only (a run without ``-n`` is unchanged):

- Threads: one per worker (``OMP_NUM_THREADS``, which the servers and jobs a test starts
  inherit, and torch's own), so that two workers do not fight over two cores.
- Units of work: xdist's loadgroup sends the tests of one ``xdist_group`` to one worker, in
  one go. A test module is one unit, so that what its module-scoped fixtures build (a gallery,
  a server) is built once; a test marked ``xdist_group(NAME)`` keeps its group (the Ray tests:
  one local Ray at a time); the tests that use the session's Milvus are one unit "milvus"
  (one embedded Milvus started per run, not one per worker). A module that names its shared
  module fixtures in ``XDIST_SHARED_FIXTURES`` is split: the tests that use one of them stay
  together, every other test is a unit of its own (tests/web/test_browser.py).
- Order: the units with a ``slow`` test first (``--no-loadscope-reorder`` keeps this order), so
  that the run does not end with one worker on a long module and the other idle.
"""

from __future__ import annotations

import os

import pytest

MILVUS_UNIT = "milvus"


def is_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def one_thread_per_worker() -> None:
    """OMP_NUM_THREADS=1 unless set (inherited by every process a test starts; read by faiss
    and by torch, whose thread count the ONNX engine follows), and torch told the same."""
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
    import torch

    torch.set_num_threads(threads)


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def uses_milvus(item: pytest.Item) -> bool:
    """On the session's Milvus: through its fixture, or as the "milvus" case of a backend
    parameter (tests/indexer: ``request.getfixturevalue("milvus_backend")``)."""
    params = getattr(item, "callspec", None)
    return "milvus_uri" in item.fixturenames or (
        params is not None and "milvus" in params.params.values())


def _unit(item: pytest.Item) -> str | None:
    """The group this test runs in; None: a unit of its own."""
    module = _module(item)
    if uses_milvus(item):
        return MILVUS_UNIT
    shared = getattr(item.module, "XDIST_SHARED_FIXTURES", None)
    if shared is None:
        return module
    used = sorted(set(shared) & set(item.fixturenames))
    return f"{module}::{'+'.join(used)}" if used else None


def assign_units(items: list[pytest.Item]) -> None:
    """Mark each test with its ``xdist_group`` (unless it has one) and move the units that hold
    a slow test to the front, keeping the order otherwise."""
    units: dict[int, str] = {}
    for item in items:
        explicit = item.get_closest_marker("xdist_group")
        unit = (str(explicit.args[0] if explicit.args else explicit.kwargs.get("name"))
                if explicit else _unit(item))
        if unit is not None and not explicit:
            item.add_marker(pytest.mark.xdist_group(unit))
        units[id(item)] = unit or item.nodeid
    slow = {units[id(i)] for i in items if i.get_closest_marker("slow")}
    items.sort(key=lambda i: units[id(i)] not in slow)
