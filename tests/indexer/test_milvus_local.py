"""The embedded Milvus starter: each server's etcd on ports of its own, so that several run on
one machine at once (a pytest-xdist worker's beside another's, a benchmark's beside the
suite's)."""

from __future__ import annotations

import re
import socket

import pytest
import yaml

from indexer.backends.milvus_local import (
    etcd_config,
    free_ports,
    local_milvus,
    with_etcd_config_path,
)


def test_etcd_config_is_one_member_on_the_given_ports():
    assert yaml.safe_load(etcd_config(41001, 41002)) == {
        "name": "tbps-milvus",
        "listen-peer-urls": "http://127.0.0.1:41001",
        "initial-advertise-peer-urls": "http://127.0.0.1:41001",
        "initial-cluster": "tbps-milvus=http://127.0.0.1:41001",
        "listen-client-urls": "http://127.0.0.1:41002",
        "advertise-client-urls": "http://127.0.0.1:41002"}


def test_the_packages_template_gets_the_etcd_config_path_inside_its_etcd_section(tmp_path):
    milvus = pytest.importorskip("milvus", reason="the embedded Milvus server (test extra)")
    path = tmp_path / "etcd.yaml"
    text = with_etcd_config_path(milvus.MilvusServerConfig().template_text, path)
    etcd = re.search(r"^etcd:\n((?:  .*\n|\s*\n)+)", text, re.MULTILINE).group(1)
    assert f"\n  config:\n    path: {path}\n  use:\n    embed: true" in etcd
    assert text.count("path: " + str(path)) == 1
    with pytest.raises(RuntimeError, match="template has changed"):
        with_etcd_config_path("etcd:\n  endpoints: localhost:2379\n", path)


def test_free_ports_are_different_and_bindable():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_a_second_server_starts_and_answers_while_the_sessions_runs(milvus_uri, tmp_path):
    pymilvus = pytest.importorskip("pymilvus", reason="the scale extra")
    pytest.importorskip("milvus", reason="the embedded Milvus server (test extra)")
    first = pymilvus.MilvusClient(uri=milvus_uri)
    with local_milvus(tmp_path / "second") as uri:
        assert uri != milvus_uri
        second = pymilvus.MilvusClient(uri=uri)
        name = "t" + tmp_path.name.encode().hex()[:24]
        second.create_collection(name, dimension=4)
        try:
            assert name in second.list_collections()
            assert name not in first.list_collections()  # two servers, not one
        finally:
            second.drop_collection(name)
            second.close()
    first.close()
