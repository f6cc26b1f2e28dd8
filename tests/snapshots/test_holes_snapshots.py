"""Forged snapshots, on the client port and on the peer transport, change nothing and stop nothing.

Regressions for the issue "Let no one in":

* a ``SnapshotBegin/Part/End`` naming the current leader and term (both
  public) was committed as the node's current snapshot; at the next restart
  the node took it as the truth and deleted its log;
* a SNAPSHOT message whose data the node did not have made ``persist``
  raise, and the node stopped.

Nodes with real disks on one task.Clock (snapshot_cluster.py).
"""

from __future__ import annotations

import hashlib

from snapshot_cluster import SnapCluster
from twisted.internet import defer

from storg.raft.types import ConfState, Message, MessageType, SnapshotMeta
from storg.wire.snapshots import SnapshotBegin, SnapshotEnd, SnapshotPart, SnapshotStored

FORGED = b"\x00\x00\x00\x04evil" * 100


def forge_client_port_snapshot(c: SnapCluster, victim: str, index: int) -> list:
    """An attacker on the victim's client port, naming the leader and term the victim follows."""
    core = c.members[victim].node.core
    frames: list = []
    got: list = []
    defer.Deferred.fromCoroutine(c.connect(c.clock, victim)).addCallback(got.append)
    c.step()
    (conn,) = got
    sha = hashlib.sha256(FORGED).hexdigest()
    stream = conn.request_stream(
        lambda rid: SnapshotBegin(rid, core.leader, core.term, index, core.term,
                                  tuple(sorted(core.conf.voters)), (), len(FORGED), sha),
        lambda frame: frames.append(frame) or isinstance(frame, SnapshotStored))
    stream.done.addErrback(lambda f: frames.append(f.value))
    c.step()
    stream.send(SnapshotPart(stream.request_id, 0, FORGED))
    c.step()
    stream.send(SnapshotEnd(stream.request_id))
    for _ in range(5):
        c.step()
    return frames


def test_a_forged_client_port_snapshot_replaces_nothing_and_the_node_restarts_on_its_own_log(tmp_path):
    c = SnapCluster(tmp_path, every=1000)
    c.put_files(range(8))
    c.run_until(lambda: c.converged())
    leader = c.wait_leader()
    victim = next(nid for nid in c.ids if nid != leader.nid)
    before = c.members[victim].store.latest_snapshot()
    digest = c.members[victim].fsm.digest()
    applied = c.members[victim].node.applied_index

    frames = forge_client_port_snapshot(c, victim, index=10**6)
    assert frames and isinstance(frames[-1], SnapshotStored)  # it looked like the leader to it
    assert c.members[victim].store.latest_snapshot() == before  # ... and replaced nothing

    c.crash(victim)
    back = c.start(victim)
    assert back.start_snapshot == (before.index if before else 0)
    assert back.start_tail >= applied  # the log was kept
    c.run_until(lambda: c.converged())
    assert back.fsm.digest() == digest or back.node.applied_index > applied
    c.put_files(range(8, 10))
    c.run_until(lambda: c.converged())
    assert back.fsm.stats()["files"] == 10


def test_a_snapshot_message_without_its_data_is_dropped_and_the_node_keeps_running(tmp_path):
    c = SnapCluster(tmp_path, every=1000)
    c.put_files(range(3))
    c.run_until(lambda: c.converged())
    leader = c.wait_leader()
    victim = c.members[next(nid for nid in c.ids if nid != leader.nid)]
    core = victim.node.core
    snap = SnapshotMeta(10**6, core.term, ConfState(frozenset(c.ids)))
    victim.node.step(Message(MessageType.SNAPSHOT, leader.nid, victim.nid, term=core.term, snapshot=snap))
    c.run(0.5)
    assert victim.node._failed is None
    assert core.snapshot_meta.index < 10**6
    c.put_files(range(3, 6))
    c.run_until(lambda: c.converged())
    assert victim.fsm.stats()["files"] == 6


def test_forged_data_then_a_message_naming_it_without_its_sha256_is_not_installed(tmp_path):
    """Even a message naming the forged index and term (say, replayed by an impostor on the peer
    port) is dropped when it vouches for another SHA-256 than the data staged."""
    c = SnapCluster(tmp_path, every=1000)
    c.put_files(range(3))
    c.run_until(lambda: c.converged())
    leader = c.wait_leader()
    victim = c.members[next(nid for nid in c.ids if nid != leader.nid)]
    core = victim.node.core
    forge_client_port_snapshot(c, victim.nid, index=500)
    snap = SnapshotMeta(500, core.term, ConfState(frozenset(core.conf.voters)))
    victim.node.step(Message(MessageType.SNAPSHOT, leader.nid, victim.nid, term=core.term,
                             snapshot=snap, context=hashlib.sha256(b"the real data").digest()))
    c.run(0.5)
    assert victim.node._failed is None and core.snapshot_meta.index < 500
    assert victim.store.latest_snapshot() is None


def test_an_end_after_the_leadership_changed_is_refused_and_nothing_is_staged(tmp_path):
    from test_snapshot_frames import DATA, Follower, send_parts, start

    from storg.client.errors import ServerError
    from storg.wire import ErrorCode

    f = Follower(tmp_path)
    stream, frames = start(f, f.connect())
    send_parts(f, stream, DATA)
    f.core.term, f.core.leader = 4, "M"  # a new leader while the data streamed in
    stream.send(SnapshotEnd(stream.request_id))
    f.pump()
    assert isinstance(frames[-1], ServerError) and frames[-1].code == ErrorCode.NOT_LEADER
    assert f.receiver._staged is None and f.store.latest_snapshot() is None
