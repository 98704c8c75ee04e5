"""A Milvus standalone server on this machine, for the test suite and the benchmarks.

The ``milvus`` PyPI package (2.3.5) ships the real Milvus standalone binary (embedded etcd,
local object storage); this starts it on free ports under a folder and stops it after. It is
the same server as the docker-compose ``milvus`` profile's, one process instead of three, not a
re-implementation (milvus-lite is: it has no aliases, so publish and rollback could not run).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

ETCD_PEER_PORT = 2380  # the embedded etcd's peer port: fixed in the 2.3.5 binary


class MilvusBusy(RuntimeError):
    """Another embedded Milvus runs on this machine (one at a time: a fixed etcd port)."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def local_milvus(base_dir: Path) -> Iterator[str]:
    """Start a Milvus standalone server with its data under ``base_dir``; yields its URI."""
    from milvus import MilvusServer  # the test extra's embedded server

    if not _port_free(ETCD_PEER_PORT):
        raise MilvusBusy(f"port {ETCD_PEER_PORT} is taken: another embedded Milvus (or etcd) "
                         "runs on this machine, and this one would time out after 180 s")
    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    server.start()
    uri = f"http://127.0.0.1:{server.listen_port}"
    log.info("Milvus standalone at %s (data %s)", uri, base_dir)
    try:
        yield uri
    finally:
        server.stop()
