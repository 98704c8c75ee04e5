"""How the suite runs on pytest-xdist workers (``make test``: ``-n 2 --dist loadfile``).

Each worker is a process of its own with its own session fixtures: its own throwaway PostgreSQL
databases (uuid names), its own embedded Milvus when it runs a Milvus test (etcd on free ports,
starts taken in turn: indexer/backends/milvus_local.py), its own temporary folders; a local
Ray is started by one worker at a time (a lock file: tests/local_ray.py). A test file is one
unit of work, so that what its module-scoped fixtures build (a gallery, a server) is built
once. What is decided here, in the workers only (a run without ``-n`` is unchanged):

- Threads: one per worker (``OMP_NUM_THREADS``, which the servers and jobs a test starts
  inherit, and torch's own, which the ONNX engine follows), so that two workers do not fight
  over two cores.
- Order: the files with a ``slow`` test first (``--no-loadscope-reorder`` keeps this order
  instead of xdist's most-tests-first), so that the run does not end with one worker on a long
  file and the other idle.

Not ``--dist loadgroup``: with pytest 9.2 it silently stops grouping (pytest-xdist issue 1386:
it appends the group to ``item._nodeid``, which pytest no longer reads), so named groups across
files cannot be had.
"""

from __future__ import annotations

import os

import pytest


def is_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def one_thread_per_worker() -> None:
    """OMP_NUM_THREADS=1 unless set (inherited by every process a test starts; read by faiss
    and by torch), and torch told the same."""
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
    import torch

    torch.set_num_threads(threads)


def slow_files_first(items: list[pytest.Item]) -> None:
    """Move the files that hold a slow test to the front, keeping the order otherwise."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
