"""Repair: the leader keeps R copies of every chunk a file needs.

What to repair is read from the chunk map, which every node holds, so a
new leader picks up where the old one stopped; only "how long has that node
been silent" is the leader's own observation (it probes each member's
client port once a round), so a new leader waits a full grace before it
gives up on a node.

A chunk needs work when fewer than R of its recorded holders are still
good: members that have not been unreachable for longer than
``repair_grace_s``.  The leader fetches a verified copy from a live holder,
stores it on the least-used reachable voters that lack it (each fsyncs
before acknowledging), then proposes a ChunkHoldersCommand naming the
holders it started from; the state machine refuses it if the entry changed
meanwhile, and the next round decides again.  Holders dropped that way
(removed, or gone past the grace) keep their copy until they come back,
where it is an orphan that garbage collection deletes.

Copies go through a rate limiter, so repair after a lost node takes its
share of disk and network and leaves the rest to clients.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer, task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.node.raft_node import RaftNode
from storg.server.files.applied import AppliedWaiter
from storg.server.files.chunk_io import Chunks, ChunkUnavailable
from storg.server.files.pins import CollectGuard
from storg.server.files.placement import Liveness, place
from storg.server.files.replication import ChunkReplicator
from storg.server.upkeep.pacing import SCAN_SLICE, RateLimiter
from storg.wire import CODEC, StatusReply, StatusRequest
from storg.wire.chunks import ChunkHoldersCommand

log = Logger(namespace="storg.repair")

PROBE_TIMEOUT = 2.0


class Repairer:
    """The leader's repair loop; idle on followers."""

    def __init__(self, node: RaftNode, fsm: Any, reactor: Any, *, chunks: Chunks,
                 replicator: ChunkReplicator, guard: CollectGuard, applied: AppliedWaiter,
                 liveness: Liveness, grace: float, rate: float, interval: float,
                 parallel: int = 4) -> None:
        self.node = node
        self.fsm = fsm
        self.reactor = reactor
        self.chunks = chunks
        self.replicator = replicator
        self.guard = guard
        self.applied = applied
        self.grace = grace
        self.interval = interval
        self.limiter = RateLimiter(self.reactor, rate)
        self.liveness = liveness
        """Recorded here (the leader's probes); placement reads it too."""
        self.parallel = parallel
        self.counters: Counter[str] = Counter()
        self.under_replicated = 0
        self.lost = 0
        """Chunks in use with no reachable holder at the last round (``storg_chunks_lost``)."""
        self.queued = 0
        """Chunks the last round planned to copy or re-home (``storg_repair_queue_chunks``)."""
        self.rounds = 0
        self._loop: LoopingCall | None = None
        self._round: defer.Deferred | None = None
        self._stopped = False
        self._announced: frozenset[str] | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.run_round)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("repair loop stopped", f))

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def run_round(self) -> defer.Deferred:
        """One pass over the chunk map (at most one at a time); never fails."""
        if self._round is not None:
            return defer.succeed(None)
        d = self._run_round()
        self._round = d

        def done(result: Any) -> None:
            self._round = None
            if isinstance(result, Failure):
                log.failure("repair round failed", result)

        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _run_round(self):
        if not self.node.is_leader():
            self.liveness.reset()
            self.rounds = 0
            self._announced = None
            return
        yield self._probe_all()
        plan, under, lost = yield self._scan()
        self.under_replicated = under
        self.lost = lost
        self.queued = len(plan)
        self.rounds += 1
        if plan:
            log.info("repair: {n} chunks need copies or holder changes", n=len(plan))
            semaphore = defer.DeferredSemaphore(self.parallel)
            yield defer.DeferredList([semaphore.run(self._repair_one, digest) for digest in plan],
                                     consumeErrors=True)

    @defer.inlineCallbacks
    def _probe_all(self):
        me = self.node.node_id
        members = sorted(self.node.core.conf.members())
        self.liveness.record(me, True)
        others = [n for n in members if n != me]
        results = yield defer.DeferredList([self._probe(n) for n in others], consumeErrors=True)
        for node_id, (ok, _) in zip(others, results, strict=True):
            self.liveness.record(node_id, ok)
        self._announce(members)

    def _announce(self, members: list[str]) -> None:
        """One log line when the set of members this leader cannot reach changes (and at its
        first round): an operator sees who placement and repair avoid, a test when it is none."""
        failing = self.liveness.failing()
        if failing == self._announced:
            return
        self._announced = failing
        if failing:
            log.info("repair: {n} of {total} members unreachable: {ids}", n=len(failing),
                     total=len(members), ids=",".join(sorted(failing)))
        else:
            log.info("repair: all {total} members reachable", total=len(members))

    @defer.inlineCallbacks
    def _probe(self, node_id: str):
        remote = self.chunks.remote
        connecting = remote.connection(node_id)
        connecting.addTimeout(PROBE_TIMEOUT, self.reactor)
        conn = yield connecting
        d = conn.request(StatusRequest)
        d.addTimeout(PROBE_TIMEOUT, self.reactor)
        reply = yield d
        if not isinstance(reply, StatusReply):
            raise ChunkUnavailable(f"{node_id} answered {type(reply).__name__} to a status probe")
        return True

    def _judge(self, holders: frozenset[str]) -> tuple[set[str], int, bool]:
        """(holders to keep, copies missing, whether it counts as under-replicated now)."""
        conf = self.node.core.conf
        members = conf.members()
        want = min(self.replicator.replication_factor, len(conf.voters))
        keep = {h for h in holders if h in members and self.liveness.down_for(h) <= self.grace}
        live = sum(1 for h in keep if self.liveness.reachable(h))
        return keep, want - len(keep), live < want

    @defer.inlineCallbacks
    def _scan(self):
        """The digests needing work, how many chunks have fewer than R reachable copies, and how
        many have none reachable (lost, as far as this leader can see: until a holder is back)."""
        digests = self.fsm.chunk_digests()
        plan: list[bytes] = []
        under = lost = 0
        reachable_voters = {n for n in self.node.core.conf.voters if self.liveness.reachable(n)}
        for start in range(0, len(digests), SCAN_SLICE):
            if start:
                yield task.deferLater(self.reactor, 0, lambda: None)
            if self._stopped or not self.node.is_leader():
                break
            for digest in digests[start:start + SCAN_SLICE]:
                chunk = self.fsm.chunk_by_digest(digest)
                if chunk is None or chunk.refs == 0:
                    continue  # garbage collection's business, not repair's
                keep, missing, short = self._judge(chunk.holders)
                under += short
                if not any(self.liveness.reachable(h) for h in chunk.holders):
                    lost += 1
                if len(keep) != len(chunk.holders) or (missing > 0 and reachable_voters - chunk.holders):
                    plan.append(digest)  # a holder to drop, or a reachable node to copy to
        return plan, under, lost

    @defer.inlineCallbacks
    def _repair_one(self, digest: bytes):
        if self._stopped or not self.node.is_leader():
            return
        chunk = self.fsm.chunk_by_digest(digest)
        if chunk is None or chunk.refs == 0:
            return
        chunk_hash = digest.hex()
        keep, missing, _ = self._judge(chunk.holders)
        voters = sorted(self.node.core.conf.voters)
        targets: list[str] = []
        if missing > 0:
            candidates = [n for n in voters if n not in chunk.holders and self.liveness.reachable(n)]
            targets = place(chunk_hash, candidates, missing, self.replicator.projected_usage())
            if not targets and len(keep) == len(chunk.holders):
                return  # nowhere to copy to yet; the count stays short until a node is back
        self.guard.pin(chunk_hash)
        try:
            stored: list[str] = []
            if targets:
                sources = sorted(keep, key=lambda n: not self.liveness.reachable(n)) + \
                    sorted(chunk.holders - keep)
                data = yield self.chunks.read(chunk_hash, sources)
                yield self.limiter.reserve(len(data) * len(targets))
                barrier = self.guard.barrier()
                yield self.applied.wait(barrier)
                results = yield defer.DeferredList(
                    [self.replicator.store_on(t, chunk_hash, data, barrier) for t in targets], consumeErrors=True)
                for target, (ok, value) in zip(targets, results, strict=True):
                    if ok:
                        stored.append(target)
                    else:
                        log.info("repair: copying chunk {h} to {t} failed: {why}", h=chunk_hash[:12],
                                 t=target, why=value.getErrorMessage())
            holders = sorted(keep | set(stored))
            if not holders or frozenset(holders) == chunk.holders:
                return
            command = ChunkHoldersCommand(chunk_hash, tuple(sorted(chunk.holders)), tuple(holders))
            yield self.node.propose(CODEC.encode(command))
            self.counters["copies"] += len(stored)
            self.counters["bytes"] += len(stored) * chunk.size
            self.counters["holder_changes"] += 1
        except ChunkUnavailable as exc:
            log.warn("repair: no intact copy of chunk {h} could be read: {why}", h=chunk_hash, why=exc)
        except Exception as exc:  # a stale change, a lost leadership, a timeout: next round decides
            log.info("repair of chunk {h} postponed: {why}", h=chunk_hash[:12], why=exc)
        finally:
            self.guard.unpin([chunk_hash])
