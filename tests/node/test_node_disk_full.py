"""A full disk under the Raft log: the node holds its write and retries; it never acknowledges
what it did not persist, and it does not stop (it used to: storage failure -> reactor.stop)."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from storg.node.raft_node import LogFull, RaftNode, run_inline
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import ProposalDropped
from storg.raft.types import ConfState, MessageType, Role, SnapshotMeta
from storg.storage.errors import DiskFullError, StorageError
from storg.testing.memory import ListStateMachine, MemoryLogStore, MemoryNetwork

TICK = 0.01
IDS = ("a", "b", "c")


class FillableStore(MemoryLogStore):
    """A MemoryLogStore whose disk can be full: persist then writes nothing and raises."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.refused = 0
        self.broken = False

    def persist(self, snapshot, entries, hard_state) -> None:
        if self.broken:
            raise StorageError("the disk is gone")
        if self.full and (entries or hard_state is not None or snapshot is not None):
            self.refused += 1
            raise DiskFullError("cannot append to wal/0000000000000001.wal: No space left on device")
        super().persist(snapshot, entries, hard_state)


class Cluster:
    def __init__(self) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.stores = {nid: FillableStore() for nid in IDS}
        self.sms = {nid: ListStateMachine() for nid in IDS}
        self.fatal: list[str] = []
        self.nodes: dict[str, RaftNode] = {}
        for nid in IDS:
            core = RaftCore(nid, RaftConfig(election_ticks=10, heartbeat_ticks=2), random.Random(nid),
                            snapshot=SnapshotMeta(0, 0, ConfState(voters=frozenset(IDS))))
            node = RaftNode(core, self.stores[nid], self.sms[nid], None, reactor=self.clock,
                            executor=run_inline, tick_seconds=TICK, default_timeout=30.0,
                            on_fatal=lambda f, nid=nid: self.fatal.append(nid))
            node._send = self.net.attach(nid, node.step)
            self.nodes[nid] = node
            node.start()

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / TICK)):
            self.clock.advance(TICK)

    def run_until(self, cond, seconds: float = 20.0) -> None:
        for _ in range(int(seconds / TICK)):
            if cond():
                return
            self.clock.advance(TICK)
        assert cond(), "condition not reached in simulated time"

    def leader(self) -> RaftNode:
        self.run_until(lambda: sum(n.role == Role.LEADER for n in self.nodes.values()) == 1)
        return next(n for n in self.nodes.values() if n.role == Role.LEADER)


def outcome(d):
    out: list = []
    d.addBoth(out.append)
    return out


def test_a_full_follower_acknowledges_nothing_until_it_has_written_it():
    c = Cluster()
    leader = c.leader()
    follower, other = [nid for nid in IDS if nid != leader.node_id]
    held = c.nodes[follower]
    c.net.down.add(other)  # the full follower is the only one that could make a majority
    c.stores[follower].full = True
    sent_before = len(c.net.sent)
    done = outcome(leader.propose(b"x"))
    c.run_until(lambda: held.log_full)
    # While held it takes no more entries into memory: they could not be written.
    held_last = held.core.last_index
    more = [outcome(leader.propose(b"more %d" % i)) for i in range(20)]
    c.run(3.0)
    assert held.core.last_index == held_last
    assert c.stores[follower].refused >= 3, "the write was not retried"
    assert c.fatal == [] and held._failed is None, "a full disk stopped the node"
    assert held.log_full
    read = outcome(held.read_index())
    assert read and read[0].check(LogFull), "a read waited on a node that can take no Ready"
    acks = [m for m in c.net.sent[sent_before:]
            if m.frm == follower and m.type == MessageType.APPEND_RESP and not m.reject]
    assert acks == [], f"the full follower acknowledged entries it did not persist: {acks}"
    assert done == [] and b"x" not in c.sms[leader.node_id].applied, "committed without a majority"

    c.stores[follower].full = False  # space freed
    c.run_until(lambda: not held.log_full)
    c.net.down.discard(other)
    # Both held "x" durably, so whoever leads now commits it; the rest may be overwritten.
    c.run_until(lambda: all(b"x" in sm.applied for sm in c.sms.values())
                and all(r != [] for r in more))
    c.run(1.0)
    assert c.sms[follower].applied == c.sms[leader.node_id].applied == c.sms[other].applied
    assert [e.data for e in c.stores[follower].entries if e.data][0] == b"x"
    assert c.fatal == []


def test_a_full_leader_is_replaced_refuses_proposals_and_rejoins_when_space_returns():
    c = Cluster()
    leader = c.leader()
    c.stores[leader.node_id].full = True
    first = outcome(leader.propose(b"held"))
    c.run_until(lambda: leader.log_full)
    refused = outcome(leader.propose(b"refused")) if leader.role == Role.LEADER else []
    if refused:
        assert refused[0].check(ProposalDropped)
    # The others elect a leader among themselves and go on.
    c.run_until(lambda: any(n.role == Role.LEADER for nid, n in c.nodes.items() if nid != leader.node_id))
    new = next(n for nid, n in c.nodes.items() if nid != leader.node_id and n.role == Role.LEADER)
    after = outcome(new.propose(b"after"))
    c.run_until(lambda: after != [])
    assert isinstance(after[0], int), after
    assert c.fatal == [] and leader._failed is None

    c.stores[leader.node_id].full = False
    c.run_until(lambda: not leader.log_full and b"after" in c.sms[leader.node_id].applied)
    # The logs agree: the old leader's held entry either committed everywhere or nowhere.
    c.run(2.0)
    logs = {nid: [(e.index, e.term, e.data) for e in c.stores[nid].entries] for nid in IDS}
    assert logs[IDS[0]] == logs[IDS[1]] == logs[IDS[2]]
    assert first == [] or isinstance(first[0], int) or first[0].check(ProposalDropped, Exception)
    assert c.fatal == []


def test_any_other_storage_error_still_stops_the_node():
    c = Cluster()
    leader = c.leader()
    c.stores[leader.node_id].broken = True
    failed = outcome(leader.propose(b"x"))
    c.run(0.5)
    assert c.fatal == [leader.node_id] and leader._failed is not None
    assert failed and not isinstance(failed[0], int)
