"""Fill: a node fetches at once the chunk copies its state machine says it holds but it lacks.

Unit level on a task.Clock, with a real state machine and real chunk stores
(inline, no threads); then with the in-process snapshot cluster, where a
follower installs the leader's snapshot and fills the copies it missed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

import storg.server.upkeep.fill as fill_module
from storg.fsm.machine import FileStoreStateMachine
from storg.raft.types import Entry
from storg.server.files.chunk_io import ChunkUnavailable
from storg.server.files.chunk_ops import ChunkOps
from storg.server.upkeep.fill import ChunkFiller
from storg.server.upkeep.pacing import RateLimiter
from storg.storage.chunks import ChunkStore
from storg.wire import CODEC
from storg.wire.chunks import ChunkHoldersCommand, CollectChunksCommand, PutFileCommand, RemoveFileCommand
from storg.wire.files import ChunkRef

from tests.snapshots.snapshot_cluster import SnapCluster

ME = "n1"


def blob(i: int, size: int = 100) -> bytes:
    return (f"chunk {i} ".encode() * size)[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class InlineLocal:
    """LocalChunks without the thread pool: every job runs at once."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.jobs = 0

    def run(self, fn, *args):
        self.jobs += 1
        return defer.maybeDeferred(fn, *args)

    def get(self, chunk_hash):
        return self.run(self.store.get, chunk_hash)


class Holders:
    """Other nodes' copies, read the way Chunks.read does: each holder in turn, verified."""

    def __init__(self) -> None:
        self.copies: dict[str, dict[str, bytes]] = {}
        self.down: set[str] = set()
        self.reads: list[str] = []
        self.gate: defer.Deferred | None = None

    def add(self, node: str, data: bytes) -> None:
        self.copies.setdefault(node, {})[sha(data)] = data

    @defer.inlineCallbacks
    def read(self, chunk_hash, holders):
        self.reads.append(chunk_hash)
        if self.gate is not None:
            yield self.gate
        for holder in holders:
            data = self.copies.get(holder, {}).get(chunk_hash)
            if holder not in self.down and data is not None and sha(data) == chunk_hash:
                return data
        raise ChunkUnavailable(f"no intact copy of chunk {chunk_hash}")


class FillParts:
    """The parts the filler is given (node, state machine, chunks, chunk jobs, scrub's pace
    and counters), around a real state machine and store."""

    def __init__(self, tmp_path, rate: float = float("inf")) -> None:
        self.reactor = Clock()
        self.fsm = FileStoreStateMachine()
        self.node = SimpleNamespace(node_id=ME)
        self.store = ChunkStore(tmp_path / "chunks")
        local = InlineLocal(self.store)
        self.holders = Holders()
        self.chunks = SimpleNamespace(local=local, read=self.holders.read)
        self.ops = ChunkOps(local)
        self.scrubber = SimpleNamespace(counters=Counter(), limiter=RateLimiter(self.reactor, rate))
        self.index = 0

    def apply(self, command) -> None:
        self.index += 1
        self.fsm.apply(Entry(term=1, index=self.index, data=CODEC.encode(command)))

    def put(self, path: str, data: bytes, holders=(ME, "n2", "n3")) -> str:
        """A committed one-chunk file whose copies sit on ``holders`` other than this node."""
        h = sha(data)
        self.apply(PutFileCommand(0, 0, 1, path, len(data), h, (ChunkRef(h, len(data), tuple(holders)),)))
        for node in holders:
            if node != ME:
                self.holders.add(node, data)
        return h


def make_filler(parts, **options) -> ChunkFiller:
    """A ChunkFiller given exactly what the node's assembly gives it."""
    return ChunkFiller(parts.node, parts.fsm, parts.reactor, chunks=parts.chunks, ops=parts.ops,
                       limiter=parts.scrubber.limiter, scrub_counters=parts.scrubber.counters,
                       **options)


def settle(clock: Clock, d: defer.Deferred, turns: int = 200) -> None:
    """Run the clock's zero-delay calls (one per slice) until ``d`` fires."""
    for _ in range(turns):
        if d.called:
            return
        clock.advance(0)
    assert d.called, "the fill pass did not finish"


def test_only_absent_chunks_recorded_here_and_still_referenced_are_fetched(tmp_path):
    files = FillParts(tmp_path)
    absent = [files.put(f"/a/{i}", blob(i)) for i in range(3)]
    present = files.put("/present", blob(10))
    files.store.put(blob(10))
    damaged = files.put("/damaged", blob(11))
    files.store.path(damaged).parent.mkdir(parents=True, exist_ok=True)
    files.store.path(damaged).write_bytes(b"rot")  # scrub's business: fill only checks existence
    not_mine = files.put("/elsewhere", blob(12), holders=("n2", "n3"))
    unreferenced = files.put("/gone", blob(13))
    files.apply(RemoveFileCommand(0, 0, 2, "/gone"))

    filler = make_filler(files)
    settle(files.reactor, filler.trigger())

    assert sorted(files.holders.reads) == sorted(absent)
    for h in absent:
        assert files.store.get(h) == files.holders.copies["n2"][h]
    assert files.store.path(damaged).read_bytes() == b"rot"
    assert not files.store.has(not_mine) and not files.store.has(unreferenced)
    assert files.store.has(present)
    assert filler.counters["fetched"] == 3 and filler.counters["passes"] == 1
    assert filler.counters["bytes_fetched"] == 300 and filler.counters["unavailable"] == 0
    assert files.scrubber.counters == Counter(missing_copies=3, repairs_done=3)
    assert not files.reactor.getDelayedCalls()  # nothing left to retry


def test_the_map_is_walked_in_slices_with_a_single_stat_job_per_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(fill_module, "SCAN_SLICE", 4)
    files = FillParts(tmp_path)
    hashes = [files.put(f"/s/{i}", blob(i)) for i in range(10)]
    for h in hashes[:5]:
        files.store.put(files.holders.copies["n2"][h])
    jobs_before = files.chunks.local.jobs
    filler = make_filler(files)
    done = filler.trigger()
    assert not done.called  # the first slice ran; the rest wait for the next reactor turns
    settle(files.reactor, done)
    assert sorted(files.holders.reads) == sorted(hashes[5:])
    # Three slices -> three existence jobs, plus one write per fetched chunk.
    assert files.chunks.local.jobs - jobs_before == 3 + 5


def test_requests_during_a_pass_are_coalesced_into_one_more_pass(tmp_path):
    files = FillParts(tmp_path)
    first = files.put("/one", blob(1))
    files.holders.gate = defer.Deferred()
    filler = make_filler(files)
    running = filler.trigger()
    assert filler.running and not running.called
    # A snapshot lands meanwhile with another chunk; three triggers ask for one more pass.
    second = files.put("/two", blob(2))
    again = [filler.trigger() for _ in range(3)]
    gate, files.holders.gate = files.holders.gate, None
    gate.callback(None)
    settle(files.reactor, again[-1])
    assert running.called and all(d.called for d in again)
    assert filler.counters["passes"] == 2
    assert files.store.has(first) and files.store.has(second)
    assert files.holders.reads == [first, second]  # the second pass did not fetch `first` again


def test_holders_down_are_retried_with_backoff_then_left_to_scrub(tmp_path):
    files = FillParts(tmp_path)
    h = files.put("/f", blob(1))
    files.holders.down = {"n2", "n3"}
    filler = make_filler(files, retry_delays=(1.0, 4.0))
    settle(files.reactor, filler.trigger())
    assert filler.counters["unavailable"] == 1 and not files.store.has(h)
    files.reactor.advance(1.0)  # first retry: still down
    assert filler.counters["passes"] == 2
    files.reactor.advance(3.9)
    assert filler.counters["passes"] == 2
    files.reactor.advance(0.1)  # second retry: still down, and the last one
    assert filler.counters["passes"] == 3
    assert not files.reactor.getDelayedCalls()
    # A new trigger (the next snapshot, a restart) starts over; the holders are back.
    files.holders.down = set()
    settle(files.reactor, filler.trigger())
    assert files.store.get(h) == blob(1)
    assert filler.counters["unavailable"] == 0


def test_a_retry_finds_a_holder_back(tmp_path):
    files = FillParts(tmp_path)
    h = files.put("/f", blob(1))
    files.holders.down = {"n2", "n3"}
    filler = make_filler(files, retry_delays=(2.0, 8.0))
    settle(files.reactor, filler.trigger())
    files.holders.down = {"n3"}
    files.reactor.advance(2.0)
    assert files.store.get(h) == blob(1)
    assert filler.counters["fetched"] == 1
    assert not files.reactor.getDelayedCalls()


@pytest.mark.parametrize("change", ["collected", "moved"])
def test_a_chunk_that_stops_being_ours_during_the_fetch_is_not_stored(tmp_path, change):
    files = FillParts(tmp_path)
    h = files.put("/f", blob(1))
    files.holders.gate = defer.Deferred()
    filler = make_filler(files)
    done = filler.trigger()
    assert files.holders.reads == [h]
    if change == "collected":
        files.apply(RemoveFileCommand(0, 0, 2, "/f"))
        files.apply(CollectChunksCommand((h,)))
        assert files.fsm.chunk(h) is None
    else:
        files.apply(ChunkHoldersCommand(h, (ME, "n2", "n3"), ("n2", "n3", "n4")))
    files.holders.gate.callback(None)
    settle(files.reactor, done)
    assert not files.store.has(h)
    assert filler.counters["fetched"] == 0 and filler.counters["unavailable"] == 0


def test_fetches_are_paced_by_the_shared_rate_limiter(tmp_path):
    files = FillParts(tmp_path, rate=1000)
    hashes = [files.put(f"/r/{i}", blob(i, 1000)) for i in range(3)]
    filler = make_filler(files, parallel=1)
    done = filler.trigger()
    assert len(files.holders.reads) == 1  # the first starts at once
    files.reactor.advance(0.99)
    assert len(files.holders.reads) == 1
    files.reactor.advance(0.02)
    assert len(files.holders.reads) == 2
    files.reactor.advance(1.0)
    settle(files.reactor, done)
    assert all(files.store.has(h) for h in hashes)


def test_stop_ends_a_pass_and_answers_waiting_triggers(tmp_path):
    files = FillParts(tmp_path)
    files.put("/f", blob(1))
    files.holders.gate = defer.Deferred()
    filler = make_filler(files)
    first, second = filler.trigger(), filler.trigger()
    filler.stop()
    files.holders.gate.callback(None)
    settle(files.reactor, first)
    assert second.called and not filler.running
    assert filler.trigger().called  # a stopped filler starts nothing
    assert not files.store.has(sha(blob(1)))


# -- with the snapshot cluster: a follower installs the leader's snapshot, then fills ------


class MemberFillParts:
    """The filler's parts for one SnapCluster member: its own store, the others' to read."""

    def __init__(self, cluster: SnapCluster, nid: str, stores: dict[str, ChunkStore]) -> None:
        member = cluster.members[nid]
        self.node, self.fsm, self.reactor = member.node, member.fsm, cluster.clock
        self.store = stores[nid]
        local = InlineLocal(self.store)
        self.ops = ChunkOps(local)
        self.scrubber = SimpleNamespace(counters=Counter(), limiter=RateLimiter(self.reactor, float("inf")))

        def read(chunk_hash, holders):
            for holder in holders:
                if holder in cluster.members and stores[holder].has(chunk_hash):
                    return defer.succeed(stores[holder].get(chunk_hash))
            return defer.fail(ChunkUnavailable(chunk_hash))

        self.chunks = SimpleNamespace(local=local, read=read)


def test_a_follower_fills_the_copies_it_missed_right_after_installing_a_snapshot(tmp_path):
    c = SnapCluster(tmp_path / "raft", every=10, part_bytes=512)
    stores = {nid: ChunkStore(tmp_path / "chunks" / nid) for nid in c.ids}

    def put_files(numbers, on):
        c.put_files(numbers)
        for i in numbers:  # what the holders wrote before the put was committed
            for nid in on:
                stores[nid].put(f"file {i}".encode())

    put_files(range(5), c.ids)
    c.run_until(lambda: c.converged())
    leader = c.wait_leader()
    lagger = next(nid for nid in c.ids if nid != leader.nid)
    c.crash(lagger)
    put_files(range(5, 40), [nid for nid in c.ids if nid != lagger])
    assert len(list(stores[lagger].list())) == 5

    back = c.start(lagger)
    filler = make_filler(MemberFillParts(c, lagger, stores))
    at_install: list[set[str]] = []

    def installed(_index: int) -> None:
        fsm = back.fsm
        at_install.append({d.hex() for d in fsm.chunk_digests() if lagger in fsm.chunk_by_digest(d).holders})
        filler.trigger()

    back.snapshots.installed.append(installed)
    c.run_until(lambda: back.snapshots.restored, seconds=30)
    c.run_until(lambda: not filler.running and filler.counters["passes"] >= 1, seconds=5)
    # Every file in the installed map names the lagger (these puts name all three nodes);
    # the ones put while it was away had no copy here until the fill.
    recorded = at_install[0]
    assert len(recorded) > 30
    assert filler.counters["fetched"] == len(recorded) - 5
    assert recorded <= set(stores[lagger].list())
    for h in recorded:
        assert sha(stores[lagger].get(h)) == h
