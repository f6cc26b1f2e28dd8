"""Garbage: chunks no file refers to, and chunk files no committed state refers to.

Chunks no file refers to are collected by the leader through the log
(``CollectChunksCommand``), never while an upload or repair on this leader
has them pinned; every node deletes its copies when the entry applies.
Chunk files that never made it into the chunk map (an upload whose client
went away), or whose node is no longer a recorded holder (repair moved the
copy elsewhere), are deleted by each node after ``orphan_grace`` seconds,
but never while the leader's upload or repair that wrote them lives: age
alone is no proof, since a put streaming from a slow stdin (or a file of a
few hundred GB) outlives any grace, and a forward clock step ages every
file at once.  So before deleting, a follower asks the leader which of its
candidates are pinned (``ChunkPinQuery``: the pins are the uploads' lease,
held until the upload is applied or has failed), keeps those, then does a
ReadIndex and checks the map again, so a chunk whose upload committed (and
unpinned) between the first look and the leader's answer is seen as
recorded.  No leader to ask: nothing is deleted this round.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from storg.node.raft_node import RaftNode
from storg.server.files.cache import SmallChunkCache
from storg.server.files.chunk_io import LocalChunks, RemoteChunks
from storg.server.files.chunk_ops import ChunkOps
from storg.server.files.pins import CollectGuard
from storg.wire import CODEC
from storg.wire.chunks import CollectChunksCommand

log = Logger(namespace="storg.files")

COLLECT_BATCH = 1000
"""Chunks one CollectChunksCommand names at most."""

PIN_QUERY_BATCH = 10000
"""Chunks one ChunkPinQuery names at most (64 hex digits each: well under a frame)."""


class GarbageCollector:
    """The leader's collect proposals and every node's orphan sweep, on a timer."""

    def __init__(self, node: RaftNode, fsm: Any, *, local: LocalChunks, ops: ChunkOps,
                 guard: CollectGuard, cache: SmallChunkCache, reactor: Any, interval: float,
                 orphan_grace: float, remote: RemoteChunks | None = None) -> None:
        self.node = node
        self.remote = remote
        """Reaches the leader for its pins; None (tests of one node): the local pins only."""
        self.fsm = fsm
        self.local = local
        self.ops = ops
        self.guard = guard
        self.cache = cache
        self.reactor = reactor
        self.interval = interval
        self.orphan_grace = orphan_grace
        self.stats: Counter[str] = Counter()
        self._loop: LoopingCall | None = None
        fsm.on_chunks_removed = self.chunks_removed

    def start(self) -> None:
        self._loop = LoopingCall(self.collect_garbage)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("garbage collection loop stopped", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def collect_garbage(self):
        """Leader: propose collecting unreferenced chunks.  Every node: drop orphan chunk files."""
        try:
            if self.node.is_leader():
                pinned = self.guard.pinned
                candidates = [h for h in self.fsm.unreferenced_chunks() if not pinned(h)]
                if candidates:
                    command = CollectChunksCommand(tuple(candidates[:COLLECT_BATCH]))
                    d = self.node.propose(CODEC.encode(command))
                    self.guard.raise_barrier()
                    yield d
            yield self.collect_orphans()
        except Exception as exc:  # no quorum now: try again next round
            log.info("garbage collection skipped this round: {why}", why=exc)

    @defer.inlineCallbacks
    def collect_orphans(self):
        """Delete local chunk files that no committed state refers to, older than the grace.

        A ReadIndex first, so this node has applied everything committed
        before the scan: a chunk of a committed file is always in the map.
        """
        yield self.node.read_index()
        store = self.local.store
        cutoff = time.time() - self.orphan_grace
        known = self.fsm.chunk
        pins = self.guard.pinned_now()

        def scan() -> list[str]:
            old = []
            for h in store.list():
                try:
                    if store.path(h).stat().st_mtime < cutoff:
                        old.append(h)
                except OSError:
                    continue
            return old

        old = yield self.local.run(scan)
        me = self.node.node_id

        def unwanted(chunk_hash: str) -> bool:
            # Not in the map (a crashed upload), or a copy the map places elsewhere
            # (repair replaced this node while it was away).
            chunk = known(chunk_hash)
            return chunk is None or me not in chunk.holders

        orphans = [h for h in old if h not in pins and unwanted(h)]
        if orphans and not self.node.is_leader():
            orphans = yield self._not_leased(orphans, unwanted)
        if orphans:
            removed = yield self.ops.delete_older(orphans, cutoff)
            self.stats["orphans_removed"] += removed
            if removed:
                log.info("removed {n} orphan chunk files", n=removed)

    @defer.inlineCallbacks
    def _not_leased(self, candidates: list[str], unwanted: Any):
        """The candidates no live upload or repair on the leader holds, and still not recorded here."""
        leader = self.node.leader
        if not leader or self.remote is None:
            if self.remote is None:
                return candidates
            raise RuntimeError("no leader to ask which orphan candidates are still being uploaded")
        leased: set[str] = set()
        for start in range(0, len(candidates), PIN_QUERY_BATCH):
            leased |= yield self.remote.pinned(leader, candidates[start:start + PIN_QUERY_BATCH])
        yield self.node.read_index()  # commits before the leader's answer are applied here now
        self.stats["orphans_leased"] += len(leased)
        return [h for h in candidates if h not in leased and unwanted(h)]

    def chunks_removed(self, hashes: tuple[str, ...]) -> None:
        """The state machine collected these chunks (on apply): delete the copies here."""
        if not hashes:
            return
        self.stats["chunks_collected"] += len(hashes)
        self.cache.discard(hashes)
        self.ops.delete(list(hashes)).addErrback(
            lambda f: log.failure("deleting collected chunks failed", f))
