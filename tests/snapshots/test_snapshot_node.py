"""Automatic snapshots, compaction, restart and InstallSnapshot on nodes driven by task.Clock."""

from __future__ import annotations

import itertools

from snapshot_cluster import SnapCluster


def test_a_snapshot_every_n_applied_entries_then_the_log_is_compacted(tmp_path):
    c = SnapCluster(tmp_path, every=10)
    last = c.put_files(range(35))
    c.run_until(lambda: c.converged())
    for member in c.members.values():
        taken = [index for index, _size, _secs in member.snapshots.auto.taken]
        assert len(taken) >= 3, taken
        assert all(b - a >= 10 for a, b in itertools.pairwise(taken))
        core = member.node.core
        assert core.snapshot_meta.index == taken[-1] <= last
        assert core.first_index == taken[-1] + 1
        assert member.store.latest_snapshot().index == taken[-1]
        # WAL segments wholly covered by the snapshot are gone.
        assert member.store.wal.first_index > 1
        assert member.store.wal.first_index <= taken[-1] + 1


def test_restart_from_snapshot_and_log_tail_restores_the_same_state(tmp_path):
    c = SnapCluster(tmp_path, every=10)
    c.put_files(range(27))
    c.run_until(lambda: c.converged())
    before = {nid: (m.fsm.digest(), m.node.applied_index) for nid, m in c.members.items()}
    assert before["a"][0] == before["b"][0]
    for nid in list(c.members):
        c.crash(nid)
    for nid in c.ids:
        c.start(nid)
    for member in c.members.values():
        assert member.start_snapshot > 0  # started from a snapshot ...
        assert member.start_tail > 0  # ... plus the entries after it
        assert member.fsm.stats()["files"] >= 1
    c.wait_leader()
    c.run_until(lambda: all(m.node.applied_index >= before[nid][1] for nid, m in c.members.items()))
    c.run_until(lambda: c.converged())
    # A new leader's no-op adds an index but changes no state.
    assert {m.fsm.digest() for m in c.members.values()} == {before["a"][0]}
    assert c.members["a"].fsm.stats()["files"] == 27


def test_a_follower_behind_the_compacted_log_catches_up_by_snapshot(tmp_path):
    c = SnapCluster(tmp_path, every=10, part_bytes=512)
    c.put_files(range(5))
    c.run_until(lambda: c.converged())
    leader = c.wait_leader()
    lagger = next(nid for nid in c.ids if nid != leader.nid)
    lagger_last = c.members[lagger].node.core.last_index
    c.crash(lagger)
    c.put_files(range(5, 40))
    # The leader no longer has the entries the lagger needs next.
    assert leader.node.core.first_index > lagger_last + 1
    c.start(lagger)
    back = c.members[lagger]
    c.run_until(lambda: back.snapshots.restored, seconds=30)
    c.run_until(lambda: c.converged(), seconds=30)
    index, _seconds = back.snapshots.restored[0]
    assert index > 5
    assert back.snapshots.receiver.stored[0][0] == index
    assert back.fsm.stats()["files"] == 40
    # The follower's own log restarts after the installed snapshot.
    assert back.node.core.snapshot_meta.index >= index
    assert back.store.wal.first_index >= index + 1
    sent = [s for m in c.members.values() for s in m.snapshots.sender.sent]
    assert [(peer, idx) for peer, idx, _bytes in sent] == [(lagger, index)]
    # And it keeps up with the log afterwards.
    c.put_files(range(40, 45))
    c.run_until(lambda: c.converged())
    assert back.fsm.get("/dir1/f00043") is not None
    # Restarted, it comes back from the installed snapshot plus the entries after it.
    c.crash(lagger)
    again = c.start(lagger)
    assert again.start_snapshot >= index and again.start_tail > 0
    c.run_until(lambda: c.converged())


def test_an_interrupted_transfer_resumes_at_the_offset_the_follower_kept(tmp_path):
    c = SnapCluster(tmp_path, every=10, part_bytes=256)
    leader = c.wait_leader()
    lagger = next(nid for nid in c.ids if nid != leader.nid)
    c.crash(lagger)
    c.put_files(range(30))
    c.start(lagger)
    back = c.members[lagger]
    receiver = back.snapshots.receiver
    original = receiver.part
    parts = []

    def drop_after_three(req, conn):
        parts.append(req.offset)
        result = original(req, conn)
        if len(parts) == 3:
            conn.transport.abortConnection()  # the link dies mid-stream
        return result

    receiver.part = drop_after_three
    c.run_until(lambda: back.snapshots.restored, seconds=30)
    c.run_until(lambda: c.converged(), seconds=30)
    index, resumed_from = receiver.stored[0]
    assert resumed_from == 3 * 256
    assert c.connections >= 2
    # The second connection started at the kept offset, not at zero.
    assert parts[3] == 3 * 256
    assert back.fsm.stats()["files"] == 30
