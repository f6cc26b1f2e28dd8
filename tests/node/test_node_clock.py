"""RaftNode in one reactor: task.Clock for time, in-memory storage and network."""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.internet.task import Clock

from storg.node import NodeStopped, RaftNode, Timeout, run_inline
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import NotLeader
from storg.raft.types import ConfState, Role, SnapshotMeta
from storg.testing import ListStateMachine, MemoryLogStore, MemoryNetwork

TICK = 0.01
IDS = ("a", "b", "c")


class Cluster:
    def __init__(self, ids=IDS, seed=1, executor_for=None):
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.ids = ids
        self.stores = {nid: MemoryLogStore() for nid in ids}
        self.sms: dict[str, ListStateMachine] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.seed = seed
        self.executor_for = executor_for or (lambda nid: run_inline)
        for nid in ids:
            self.start(nid)

    def start(self, nid):
        state = self.stores[nid].load()
        snap = state.snapshot if state.snapshot.conf.voters else SnapshotMeta(
            0, 0, ConfState(voters=frozenset(self.ids)))
        core = RaftCore(nid, RaftConfig(election_ticks=10, heartbeat_ticks=2),
                        random.Random(f"{self.seed}-{nid}-{len(self.sms)}"),
                        hard_state=state.hard_state, snapshot=snap, entries=state.entries)
        sm = ListStateMachine()
        node = RaftNode(core, self.stores[nid], sm, None, reactor=self.clock,
                        executor=self.executor_for(nid), tick_seconds=TICK, default_timeout=5.0)
        node._send = self.net.attach(nid, node.step)
        self.net.down.discard(nid)
        self.sms[nid] = sm
        self.nodes[nid] = node
        node.start()
        return node

    def crash(self, nid):
        node = self.nodes.pop(nid)
        self.net.down.add(nid)
        node.stop()

    def run(self, seconds):
        for _ in range(int(seconds / TICK)):
            self.clock.advance(TICK)

    def run_until(self, cond, seconds=10.0):
        for _ in range(int(seconds / TICK)):
            if cond():
                return
            self.clock.advance(TICK)
        assert cond(), "condition not reached in simulated time"

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role == Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self):
        self.run_until(lambda: self.leader() is not None)
        return self.leader()


def result_of(d):
    out = []
    d.addBoth(out.append)
    return out


def test_elects_a_leader_and_applies_a_proposal_everywhere():
    c = Cluster()
    leader = c.wait_leader()
    got = result_of(leader.propose(b"hello"))
    c.run_until(lambda: got)
    index = got[0]
    assert isinstance(index, int)
    c.run_until(lambda: all(sm.applied == [b"hello"] for sm in c.sms.values()))
    assert all(n.applied_index >= index for n in c.nodes.values())


def test_follower_refuses_proposals_with_a_leader_hint():
    c = Cluster()
    leader = c.wait_leader()
    c.run(0.1)
    follower = next(n for n in c.nodes.values() if n is not leader)
    got = result_of(follower.propose(b"x"))
    assert got and got[0].check(NotLeader)
    assert got[0].value.leader == leader.node_id


def test_read_index_fires_once_applied_up_to_the_commit_index():
    c = Cluster()
    leader = c.wait_leader()
    done = result_of(leader.propose(b"w"))
    c.run_until(lambda: done)
    follower = next(n for n in c.nodes.values() if n is not leader)
    read = result_of(follower.read_index())
    c.run_until(lambda: read)
    assert read[0] >= done[0]
    assert follower.applied_index >= read[0]
    assert b"w" in c.sms[follower.node_id].applied


def test_an_isolated_leader_times_out_proposals_and_the_majority_moves_on():
    c = Cluster()
    old = c.wait_leader()
    c.net.isolate(old.node_id)
    got = result_of(old.propose(b"lost"))
    c.run(1.0)
    others = [n for n in c.nodes.values() if n is not old]
    assert any(n.role == Role.LEADER for n in others)
    c.run(5.0)
    assert got and got[0].check(Timeout)
    assert all(b"lost" not in c.sms[n.node_id].applied for n in others)


def test_a_slow_disk_does_not_starve_a_followers_election_timer():
    """Heartbeats keep stepping into the core while a follower's fsync hangs."""
    hung: list[defer.Deferred] = []

    def executor_for(nid):
        def run(fn, *args):
            if nid == "c" and hang["on"]:
                d = defer.Deferred()
                d.addCallback(lambda _: fn(*args))
                hung.append(d)
                return d
            return run_inline(fn, *args)
        return run

    hang = {"on": False}
    c = Cluster(executor_for=executor_for)
    leader = c.wait_leader()
    assert leader.node_id != "c", "this seed elects a or b; pick another seed if the core changes"
    term = leader.term
    hang["on"] = True
    done = result_of(leader.propose(b"slow"))
    c.run(3.0)  # thirty election timeouts with c's disk stuck
    assert hung, "c never tried to persist"
    assert c.nodes["c"].role == Role.FOLLOWER
    assert leader.role == Role.LEADER and leader.term == term
    assert done and isinstance(done[0], int), "a and b alone commit while c's disk hangs"
    hang["on"] = False
    for d in hung:
        d.callback(None)
    c.run_until(lambda: b"slow" in c.sms["c"].applied)


def test_crash_and_restart_recovers_the_log_from_storage():
    c = Cluster()
    leader = c.wait_leader()
    results = [result_of(leader.propose(f"v{i}".encode())) for i in range(5)]
    c.run_until(lambda: all(results))
    victim = next(nid for nid in c.ids if nid != leader.node_id)
    c.crash(victim)
    c.run(0.5)
    node = c.start(victim)
    c.run_until(lambda: c.sms[victim].applied == [f"v{i}".encode() for i in range(5)])
    assert node.core.term >= leader.term


def test_transfer_leadership_hands_over_without_an_election_timeout():
    c = Cluster()
    leader = c.wait_leader()
    c.run(0.2)
    target = next(nid for nid in c.ids if nid != leader.node_id)
    got = result_of(leader.transfer_leadership(target))
    c.run_until(lambda: got, seconds=1.0)
    assert got[0] == target
    assert c.nodes[target].role == Role.LEADER


def test_stop_fails_pending_operations():
    c = Cluster()
    leader = c.wait_leader()
    c.net.isolate(leader.node_id)
    got = result_of(leader.propose(b"x"))
    leader.stop()
    assert got and got[0].check(NodeStopped)
