"""RaftNode in one reactor: task.Clock for time, in-memory storage and network."""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.internet.task import Clock

from storg.node.raft_node import NodeStopped, RaftNode, Timeout, run_inline
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import NotLeader
from storg.raft.types import ConfState, MessageType, Role, SnapshotMeta
from storg.testing.memory import ListStateMachine, MemoryLogStore, MemoryNetwork

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


def test_reads_from_several_followers_at_once_are_all_answered():
    """Each node's read contexts are its own: the leader must not take two followers'
    first reads for one and drop the other (which then timed out)."""
    c = Cluster()
    leader = c.wait_leader()
    done = result_of(leader.propose(b"w"))
    c.run_until(lambda: done)
    followers = [n for n in c.nodes.values() if n is not leader]
    reads = [result_of(n.read_index()) for n in followers for _ in range(3)]
    reads.append(result_of(leader.read_index()))
    c.run_until(lambda: all(reads), seconds=1.0)
    assert all(isinstance(r[0], int) and r[0] >= done[0] for r in reads)


def test_read_contexts_differ_between_nodes_and_restarts():
    c = Cluster()
    first = {nid: n._read_prefix for nid, n in c.nodes.items()}
    assert len(set(first.values())) == len(first)
    c.crash("a")
    again = c.start("a")
    assert again._read_prefix != first["a"]


def test_reads_arriving_in_one_turn_share_one_read_index():
    c = Cluster()
    leader = c.wait_leader()
    done = result_of(leader.propose(b"w"))
    c.run_until(lambda: done)
    follower = next(n for n in c.nodes.values() if n is not leader)
    before = len(c.net.sent)
    reads = [result_of(follower.read_index()) for _ in range(20)]
    c.run_until(lambda: all(reads), seconds=1.0)
    asks = [m for m in c.net.sent[before:]
            if m.type == MessageType.READ_INDEX and m.frm == follower.node_id]
    assert len(asks) == 1
    assert {r[0] for r in reads} == {reads[0][0]} and reads[0][0] >= done[0]


def test_a_read_arriving_after_a_batch_was_issued_waits_for_a_newer_read_index():
    c = Cluster()
    leader = c.wait_leader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    first = result_of(follower.read_index())
    c.clock.advance(0)  # the first batch is issued
    write = result_of(leader.propose(b"later"))
    c.run_until(lambda: write)
    second = result_of(follower.read_index())
    c.run_until(lambda: first and second, seconds=1.0)
    assert second[0] >= write[0]
    assert b"later" in c.sms[follower.node_id].applied


def test_a_read_timing_out_in_a_batch_leaves_the_others_be():
    c = Cluster()
    leader = c.wait_leader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    c.net.isolate(follower.node_id)
    short = result_of(follower.read_index(timeout=0.05))
    long = result_of(follower.read_index(timeout=5.0))
    c.run(0.2)
    assert short and short[0].check(Timeout) and not long
    c.net.heal()
    c.run(4.9)
    assert long and long[0].check(Timeout)
    assert not follower._reads and not follower._unissued_reads


def test_ready_with_only_a_new_commit_index_skips_the_storage_thread():
    calls = {}

    def counting(nid):
        def run(fn, *args):
            snapshot, entries, hard_state = args if len(args) == 3 else (None, None, None)
            if fn.__name__ == "persist":
                calls.setdefault(nid, []).append((snapshot, list(entries), hard_state))
            return run_inline(fn, *args)
        return run

    c = Cluster(executor_for=counting)
    leader = c.wait_leader()
    for i in range(5):
        got = result_of(leader.propose(b"p%d" % i))
        c.run_until(lambda got=got: got)
    c.run(0.5)
    for nid, seen in calls.items():
        last = None
        for snapshot, entries, hard_state in seen:
            if snapshot is None and not entries:
                assert hard_state is not None and (hard_state.term, hard_state.vote) != last, nid
            if hard_state is not None:
                last = (hard_state.term, hard_state.vote)
    # The commit index still reaches the store, with the next write.
    assert c.stores[leader.node_id].hard_state.commit > 0


def test_entries_committed_by_the_last_round_are_applied_without_waiting_for_the_next_write():
    hold: set[str] = set()
    held: list = []

    def holding(nid):
        def run(fn, *args):
            if nid in hold and fn.__name__ == "persist":
                d = defer.Deferred()
                held.append((d, fn, args))
                return d
            return run_inline(fn, *args)
        return run

    def release_one():
        d, fn, args = held.pop(0)
        d.callback(fn(*args))

    c = Cluster(executor_for=holding)
    leader = c.wait_leader()
    c.run(0.1)
    hold.add(leader.node_id)
    first = result_of(leader.propose(b"first"))
    c.clock.advance(0)  # the leader writes "first" (held) and sends it
    c.clock.advance(0)
    c.clock.advance(0)  # the followers write it and acknowledge
    assert len(held) == 1 and not first
    second = result_of(leader.propose(b"second"))
    release_one()  # "first" is on the leader's disk: committed; the next Ready writes "second"
    c.clock.advance(0)
    assert len(held) == 1, "the write of 'second' is under way"
    assert first and first[0] >= 1, "'first' was answered before that write finished"
    assert not second
    assert c.sms[leader.node_id].applied[-1:] == [b"first"]
    release_one()
    c.run_until(lambda: second)
    assert second[0] == first[0] + 1
