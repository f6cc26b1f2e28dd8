"""Real ``twistd storg`` daemons on loopback: elections, kill -9, rejoin, garbage."""

from __future__ import annotations

import re
import signal
import socket
import struct

import pytest

from storg.testing.devcluster import ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""


@pytest.fixture
def cluster(tmp_path):
    c = ProcCluster.create(tmp_path, size=3)
    try:
        yield c
    finally:
        c.close()


def test_leader_appears_survives_kill_and_old_leader_rejoins(cluster):
    cluster.start_all()
    first = wait_for(cluster.leader, 30, "a first leader")
    rows = cluster.status()
    assert sorted(r["id"] for r in rows) == ["n1", "n2", "n3"]
    assert all(r["term"] >= 1 for r in rows)

    cluster.kill(first, signal.SIGKILL)
    survivors = [n for n in cluster.nodes if n != first]
    second = wait_for(lambda: cluster.leader(survivors), 30, "a new leader after kill -9")
    assert second != first
    rows = {r["id"]: r for r in cluster.status(nodes=survivors)}
    assert rows[first]["role"] == "unreachable"

    cluster.start(first)
    def rejoined():
        rows = {r["id"]: r for r in cluster.status()}
        old = rows[first]
        return old["role"] == "follower" and old["leader"] == rows[old["leader"]]["id"] and \
            old["applied_index"] >= 1 and cluster.leader() is not None
    wait_for(rejoined, 30, f"{first} to rejoin as follower")


def _garbage_connections(port: int) -> None:
    payloads = [
        b"\x00\x00\x00\x05hello",                  # a frame that is not a Hello
        struct.pack(">I", 0x7FFFFFFF) + b"xx",     # oversized length prefix
        b"\x00\x00\x01\x00abc",                    # truncated frame, then close
        b"GET / HTTP/1.1\r\n\r\n",                 # another protocol entirely
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass


def test_garbage_on_peer_and_client_ports_leaves_the_cluster_serving(cluster):
    cluster.start_all()
    leader = wait_for(cluster.leader, 30, "a leader")
    term = {r["id"]: r["term"] for r in cluster.status()}[leader]
    for node in cluster.nodes.values():
        _garbage_connections(node.peer_port)
        _garbage_connections(node.client_port)
    rows = cluster.status()
    assert all(r["role"] != "unreachable" for r in rows)
    assert cluster.leader() == leader
    assert {r["id"]: r["term"] for r in rows}[leader] == term
    assert all(node.alive() for node in cluster.nodes.values())


def test_sigterm_exits_zero_and_hands_leadership_over(cluster):
    cluster.start_all()
    leader = wait_for(cluster.leader, 30, "a leader")
    code = cluster.kill(leader, signal.SIGTERM)
    assert code == 0
    survivors = [n for n in cluster.nodes if n != leader]
    handed = re.search(r"handed leadership to (\S+) before stopping", cluster.log_text(leader))
    assert handed and handed.group(1) in survivors
    assert wait_for(lambda: cluster.leader(survivors), 30, "the new leader") == handed.group(1)
