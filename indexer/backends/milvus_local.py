"""A Milvus standalone server on this machine, for the test suite and the benchmarks.

The ``milvus`` PyPI package (2.3.5) ships the real Milvus standalone binary (embedded etcd,
local object storage); this starts it on free ports under a folder and stops it after. It is
the same server as the docker-compose ``milvus`` profile's, one process instead of three, not a
re-implementation (milvus-lite is: it has no aliases, so publish and rollback could not run).

Several can run at once (the suite's workers under pytest-xdist each start their own, a
benchmark beside them): the package picks free ports for Milvus's own services, but the
embedded etcd would listen on its built-in 2379/2380; each server here gets an etcd config
file of its own (``etcd.config.path``) naming two free ports instead. Starts are taken one at a
time across processes (a lock file), so that a port one start found free is bound by its
server before the next start looks.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.backends.locking import waiting_turn

log = logging.getLogger(__name__)

START_LOCK = Path(tempfile.gettempdir()) / "tbps-milvus-start.lock"
# where the etcd section of the package's milvus.yaml template gets its config file's path
ETCD_ANCHOR = "\n  use:\n    embed: true"


def free_ports(n: int) -> list[int]:
    """``n`` different ports no one listens on now (the OS's picks, all bound at once)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def etcd_config(peer: int, client: int) -> str:
    """The embedded etcd's own config (etcd's YAML keys): one member on these ports."""
    peer_url, client_url = f"http://127.0.0.1:{peer}", f"http://127.0.0.1:{client}"
    return (f"name: tbps-milvus\nlisten-peer-urls: {peer_url}\n"
            f"initial-advertise-peer-urls: {peer_url}\n"
            f"initial-cluster: tbps-milvus={peer_url}\n"
            f"listen-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n")


def with_etcd_config_path(template: str, path: Path) -> str:
    """The package's milvus.yaml template with ``etcd.config.path`` set to ``path``."""
    if template.count(ETCD_ANCHOR) != 1:
        raise RuntimeError("the milvus package's config template has changed: no single "
                           "etcd.use.embed to put etcd.config.path beside")
    return template.replace(ETCD_ANCHOR, f"\n  config:\n    path: {path}{ETCD_ANCHOR}")


@contextmanager
def local_milvus(base_dir: Path) -> Iterator[str]:
    """Start a Milvus standalone server with its data under ``base_dir``; yields its URI."""
    from milvus import MilvusServer, MilvusServerConfig  # the test extra's embedded server

    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    with waiting_turn(START_LOCK):  # until this server has bound its ports
        peer, client = free_ports(2)
        etcd_yaml = base_dir / "etcd.yaml"
        etcd_yaml.write_text(etcd_config(peer, client))
        config = MilvusServerConfig()
        config.template_text = with_etcd_config_path(config.template_text, etcd_yaml)
        server = MilvusServer(config, etcd_port=client)
        server.set_base_dir(str(base_dir))
        server.start()
    uri = f"http://127.0.0.1:{server.listen_port}"
    log.info("Milvus standalone at %s (etcd %d/%d, data %s)", uri, client, peer, base_dir)
    try:
        yield uri
    finally:
        server.stop()
