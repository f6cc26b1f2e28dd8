"""Limits end to end: real nodes, real storgctl.  Each limit is exceeded; storgctl says
"limit exceeded" (exit 1) and the cluster keeps serving everyone else."""

from __future__ import annotations

import json
import os
import socket

import pytest

from storg.testing.devcluster import ProcCluster, wait_for

pytestmark = pytest.mark.process

CHUNK = 64 * 1024
MAX_CONNECTIONS = 20
MAX_PROPOSAL = 8192
"""A small file's entry (4 KiB inline) fits; the metadata of a file of a few hundred chunks does not."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    c = ProcCluster.create(root, size=3, files={"chunk_size": CHUNK},
                           limits={"max_client_connections": MAX_CONNECTIONS,
                                   "max_proposal_bytes": MAX_PROPOSAL})
    c.start_all()
    try:
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def ctl(cluster, *args, input=None, nodes=None, timeout=120):
    return cluster.storgctl("--timeout", "20", *args, input=input, nodes=nodes, timeout=timeout)


def ok(out):
    assert out.returncode == 0, out.stderr.decode()
    return out


def test_chunks_reach_every_holder_through_the_placement_check(cluster) -> None:
    data = os.urandom(5 * CHUNK + 99)
    ok(ctl(cluster, "put", "-", "/placed", input=data))
    info = json.loads(ok(ctl(cluster, "--json", "stat", "/placed")).stdout)
    assert all(sorted(c["holders"]) == ["n1", "n2", "n3"] for c in info["chunks"]), info
    for nid in cluster.nodes:
        assert ok(ctl(cluster, "get", "--stale", "/placed", "-", nodes=[nid])).stdout == data


def test_a_file_whose_metadata_is_over_the_proposal_limit_is_refused(cluster) -> None:
    big = os.urandom(300 * CHUNK)
    out = ctl(cluster, "put", "-", "/too-many-chunks", input=big)
    assert out.returncode == 1, out.stderr.decode()
    assert "limit exceeded" in out.stderr.decode() and "max_proposal_bytes" in out.stderr.decode()
    # Nothing is stuck behind it: the next write commits at once.
    ok(ctl(cluster, "put", "-", "/after", input=b"x" * 4096))
    assert ok(ctl(cluster, "get", "/after", "-")).stdout == b"x" * 4096
    assert ctl(cluster, "stat", "/too-many-chunks").returncode == 1


def test_connections_over_the_limit_are_refused_and_others_are_served(cluster) -> None:
    node = cluster.nodes["n1"]
    ok(ctl(cluster, "put", "-", "/conn", input=b"hello"))
    squatters = []
    try:
        for _ in range(MAX_CONNECTIONS):
            squatters.append(socket.create_connection((node.host, node.client_port), timeout=5))
        # n1 counts them once accepted: poll with storgctl until it refuses.
        def refused():
            out = ctl(cluster, "get", "--stale", "/conn", "-", nodes=["n1"])
            return out if out.returncode == 1 else None

        out = wait_for(refused, 20, "n1 to refuse a connection over its limit")
        assert "limit exceeded" in out.stderr.decode(), out.stderr.decode()
        assert "max_client_connections" in out.stderr.decode()
        # The other nodes serve meanwhile.
        assert ok(ctl(cluster, "get", "--stale", "/conn", "-", nodes=["n2"])).stdout == b"hello"
    finally:
        for s in squatters:
            s.close()
    wait_for(lambda: ctl(cluster, "get", "--stale", "/conn", "-", nodes=["n1"]).returncode == 0, 20,
             "n1 to serve again once the connections closed")
    log = node.log_path.read_text()
    assert "refusing client connection" in log
