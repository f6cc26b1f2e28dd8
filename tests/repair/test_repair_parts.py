"""Repair's pieces on a task.Clock: rate limiter, liveness, per-chunk ordering, the leader's decisions."""

from __future__ import annotations

import hashlib
from collections import Counter
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from storg.fsm.machine import FileStoreStateMachine
from storg.raft.types import ConfState, Entry
from storg.server.files.applied import AppliedWaiter
from storg.server.files.chunk_io import ChunkUnavailable
from storg.server.files.chunk_ops import ChunkOps
from storg.server.files.placement import Liveness
from storg.server.upkeep.pacing import RateLimiter
from storg.server.upkeep.repair import Repairer
from storg.wire import CODEC
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef

DATA = b"x" * 1000
HASH = hashlib.sha256(DATA).hexdigest()


def test_rate_limiter_paces_reservations_to_the_rate():
    clock = Clock()
    limiter = RateLimiter(clock, rate=1000)
    first, second, third = limiter.reserve(500), limiter.reserve(1000), limiter.reserve(10)
    assert first.called and not second.called
    clock.advance(0.49)
    assert not second.called
    clock.advance(0.02)
    assert second.called and not third.called
    clock.advance(1.0)
    assert third.called


def test_liveness_counts_down_time_from_the_last_success_and_resets():
    clock = Clock()
    live = Liveness(clock)
    live.record("a", True)
    clock.advance(5)
    live.record("a", False)
    live.record("b", False)  # never seen: counted from when tracking began
    clock.advance(3)
    assert live.down_for("a") == 8 and live.down_for("b") == 8
    assert not live.reachable("a") and live.reachable("c")
    live.record("a", True)
    assert live.down_for("a") == 0
    live.reset()
    assert live.failing() == frozenset()


class ManualPool:
    """LocalChunks stand-in whose jobs finish only when the test says so."""

    def __init__(self):
        self.store = object()
        self.jobs: list[tuple[str, defer.Deferred]] = []

    def run(self, fn, *args):
        d = defer.Deferred()
        self.jobs.append((fn.__name__, d))
        return d


def test_chunk_ops_run_a_write_only_after_an_earlier_delete_of_the_same_chunk():
    pool = ManualPool()
    ops = ChunkOps(pool)
    deleted = ops.delete(["a", "b"])
    written = ops.put("a", b"data")
    other = ops.put("c", b"data")
    assert [name for name, _ in pool.jobs] == ["_delete_all", "_put_and_touch"]  # c runs at once
    assert ops.busy("a") and ops.busy("c")
    pool.jobs[0][1].callback(2)
    assert deleted.result == 2
    assert [name for name, _ in pool.jobs] == ["_delete_all", "_put_and_touch", "_put_and_touch"]
    pool.jobs[2][1].callback("a")
    pool.jobs[1][1].callback("c")
    assert written.called and other.called and not ops.busy("a") and not ops.busy("b")


def test_applied_waiter_fires_on_apply_and_on_a_snapshot_jump_and_times_out():
    clock = Clock()
    watchers = []
    node = SimpleNamespace(applied_index=3, on_applied=watchers.append)
    waiter = AppliedWaiter(node, clock)
    assert waiter.wait(3).called
    by_apply, by_snapshot, never = waiter.wait(5), waiter.wait(9), waiter.wait(100, timeout=1)
    never.addErrback(lambda f: f.trap(defer.TimeoutError) and "timed out")
    node.applied_index = 5
    watchers[0](5)
    assert by_apply.called and not by_snapshot.called
    node.applied_index = 20  # installed a snapshot: no on_applied call
    clock.advance(0.05)
    assert by_snapshot.called
    clock.advance(1)
    assert never.result == "timed out"


# -- the leader's decisions, on a fake node around a real state machine ------------------


class FakeNode:
    def __init__(self, fsm, voters):
        self.node_id = "n1"
        self.fsm = fsm
        self.core = SimpleNamespace(conf=ConfState(voters=frozenset(voters)), last_index=0)
        self.index = 0
        self.leader = True
        self.proposed = []

    def is_leader(self):
        return self.leader

    def propose(self, data):
        self.index += 1
        self.proposed.append(CODEC.decode(data))
        try:
            return defer.succeed(self.fsm.apply(Entry(term=1, index=self.index, data=data)))
        except Exception as exc:  # a refusal is the proposal's failure
            return defer.fail(exc)


class FakeParts:
    def __init__(self, clock, voters, holders, unreadable=()):
        self.fsm = FileStoreStateMachine()
        self.node = FakeNode(self.fsm, voters)
        self.reactor = clock
        self.replication_factor = 3
        self.pins = Counter()
        self.stored = []
        self.unreadable = set(unreadable)
        self.applied = SimpleNamespace(wait=lambda index: defer.succeed(index))
        self.chunks = SimpleNamespace(read=self._read, remote=None)
        self.node.propose(CODEC.encode(PutFileCommand(
            0, 0, 1, "/f", len(DATA), hashlib.sha256(DATA).hexdigest(),
            (ChunkRef(HASH, len(DATA), tuple(holders)),))))

    def _read(self, chunk_hash, sources):
        if set(sources) <= self.unreadable:
            return defer.fail(ChunkUnavailable("no copy"))
        return defer.succeed(DATA)

    def store_on(self, holder, chunk_hash, data, index):
        self.stored.append(holder)
        return defer.succeed(holder)

    def barrier(self):
        return 0

    def projected_usage(self):
        return self.fsm.usage()

    def pin(self, chunk_hash):
        self.pins[chunk_hash] += 1

    def unpin(self, hashes):
        for h in hashes:
            self.pins[h] -= 1


def repairer(files, down=(), grace=10):
    # The one fake plays every part the assembly hands a Repairer: the replicator
    # (store_on, projected_usage), the collect guard (pins, barrier), the chunks, the waiter.
    r = Repairer(files.node, files.fsm, files.reactor, chunks=files.chunks, replicator=files,
                 guard=files, applied=files.applied, liveness=Liveness(files.reactor),
                 grace=grace, rate=1e9, interval=1)

    def probe(node_id):
        return defer.fail(ConnectionError("down")) if node_id in down else defer.succeed(True)

    r._probe = probe
    return r


def holders(files):
    return sorted(files.fsm.chunk(HASH).holders)


def test_a_missing_copy_goes_to_a_reachable_voter_and_is_recorded():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3", "n4"], ["n1", "n2"])
    r = repairer(files, down={"n3"})
    r.run_round()
    assert files.stored == ["n4"] and holders(files) == ["n1", "n2", "n4"]
    assert r.counters["copies"] == 1 and r.under_replicated == 1  # counted before the copy
    assert (r.queued, r.lost) == (1, 0)
    r.run_round()
    assert r.under_replicated == 0 and files.stored == ["n4"]
    assert (r.queued, r.lost) == (0, 0)


def test_a_chunk_whose_holders_are_all_unreachable_is_counted_lost():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3", "n4"], ["n2", "n3"])
    r = repairer(files, down={"n2", "n3"})
    r.run_round()
    assert r.lost == 1 and r.under_replicated == 1


def test_a_holder_down_within_the_grace_is_waited_for_then_replaced():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3", "n4"], ["n1", "n2", "n3"])
    r = repairer(files, down={"n3"}, grace=10)
    r.run_round()
    assert files.stored == [] and r.under_replicated == 1
    clock.advance(11)
    r.run_round()
    assert files.stored == ["n4"] and holders(files) == ["n1", "n2", "n4"]


def test_a_removed_member_is_dropped_even_when_enough_copies_remain():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3"], ["n1", "n2", "n3", "n9"])
    repairer(files).run_round()
    assert files.stored == [] and holders(files) == ["n1", "n2", "n3"]


def test_with_no_node_to_copy_to_the_chunk_waits_and_nothing_is_proposed():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3"], ["n1", "n2"])
    r = repairer(files, down={"n3"})
    r.run_round()
    assert files.stored == [] and len(files.node.proposed) == 1  # only the put
    r = repairer(files)
    r.run_round()
    assert files.stored == ["n3"] and holders(files) == ["n1", "n2", "n3"]


def test_followers_do_not_repair_and_forget_their_liveness_view():
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3", "n4"], ["n1", "n2"])
    files.node.leader = False
    r = repairer(files)
    r.liveness.record("n4", False)
    r.run_round()
    assert files.stored == [] and r.liveness.failing() == frozenset()


@pytest.mark.parametrize("unreadable", [{"n1", "n2"}])
def test_an_unreadable_chunk_is_left_for_the_next_round(unreadable):
    clock = Clock()
    files = FakeParts(clock, ["n1", "n2", "n3"], ["n1", "n2"], unreadable=unreadable)
    r = repairer(files)
    r.run_round()
    assert files.stored == [] and holders(files) == ["n1", "n2"] and files.pins[HASH] == 0
