"""A Milvus standalone server on this machine, for the test suite and the benchmarks.

The ``milvus`` PyPI package (2.3.5) ships the real Milvus standalone binary (embedded etcd,
local object storage); this starts it on free ports under a folder and stops it after. It is
the same server as the docker-compose ``milvus`` profile's, one process instead of three, not a
re-implementation (milvus-lite is: it has no aliases, so publish and rollback could not run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def local_milvus(base_dir: Path) -> Iterator[str]:
    """Start a Milvus standalone server with its data under ``base_dir``; yields its URI."""
    from milvus import MilvusServer  # the test extra's embedded server

    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    server.start()
    uri = f"http://127.0.0.1:{server.listen_port}"
    log.info("Milvus standalone at %s (data %s)", uri, base_dir)
    try:
        yield uri
    finally:
        server.stop()
