"""Limits end to end: real nodes, real storgctl.  Each limit is exceeded; storgctl says
"limit exceeded" (exit 1) and the cluster keeps serving everyone else."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for
from storg.wire import MAX_FRAME_BYTES

pytestmark = pytest.mark.process

CHUNK = 64 * 1024
MAX_CONNECTIONS = 20

PROBE_SCRIPT = r"""
import json, sys, time
from twisted.internet import defer, task
from storg.client.api import StorgClient
from storg.net.errors import LimitExceeded

args = json.loads(sys.stdin.read())

async def main(reactor):
    client = StorgClient(args["cluster"], reactor=reactor, timeout=20)
    out = {}
    try:
        try:
            await client.probe_write(b"p" * args["size"])
            out["big"] = "committed"
        except LimitExceeded as exc:
            out["big"] = "limit exceeded: " + str(exc)
        started = time.monotonic()
        out["small_index"] = await client.probe_write(b"small")
        out["small_seconds"] = time.monotonic() - started
    finally:
        client.close()
    print(json.dumps(out))

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    # Plain TCP on loopback: the connection test holds raw sockets and reads the refusal
    # frame without a TLS stack.  The limits sit in the protocol factories, under which a
    # TLS listener puts the same factory (tests/process/test_tls_processes.py runs TLS).
    c = ProcCluster.create(root, size=3, files={"chunk_size": CHUNK},
                           limits={"max_client_connections": MAX_CONNECTIONS}, tls=False)
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
        # A stale read: a follower may apply the put a moment after the leader acked it.
        def read_here(nid: str = nid):
            out = ctl(cluster, "get", "--stale", "/placed", "-", nodes=[nid])
            return out if out.returncode == 0 else None

        assert wait_for(read_here, 20, f"{nid} to serve /placed").stdout == data


def test_a_probe_just_under_the_client_frame_limit_is_refused_and_nothing_is_stuck(cluster) -> None:
    # Issue 15: this payload fits one client frame, but its entry would make an APPEND over
    # the peer frame limit; it used to be appended, never sent, and block every later commit.
    args = {"cluster": [n.client_address for n in cluster.nodes.values()],
            "size": MAX_FRAME_BYTES - 14}  # the largest one client frame carries
    out = subprocess.run([str(BIN / "python"), "-c", PROBE_SCRIPT], input=json.dumps(args).encode(),
                         env=cluster.env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    result = json.loads(out.stdout)
    assert result["big"].startswith("limit exceeded: ") and "max_proposal_bytes" in result["big"], result
    assert result["small_seconds"] < 10, result
    ok(ctl(cluster, "put", "-", "/after-probe", input=b"x" * 4096))
    assert ok(ctl(cluster, "get", "/after-probe", "-")).stdout == b"x" * 4096


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
        # The other nodes serve meanwhile (a stale read: n2 may apply the put a moment after n1 acked it).
        def served_by_n2():
            out = ctl(cluster, "get", "--stale", "/conn", "-", nodes=["n2"])
            return out if out.returncode == 0 else None

        assert wait_for(served_by_n2, 20, "n2 to serve /conn").stdout == b"hello"
    finally:
        for s in squatters:
            s.close()
    wait_for(lambda: ctl(cluster, "get", "--stale", "/conn", "-", nodes=["n1"]).returncode == 0, 20,
             "n1 to serve again once the connections closed")
    log = node.log_path.read_text()
    assert "refusing client connection" in log
