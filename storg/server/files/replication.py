"""Storing chunks on their holders: the leader's side of a put and of a repair copy.

A fresh chunk is pinned (:class:`~storg.server.files.pins.CollectGuard`),
the collect barrier is awaited, then it goes to the holders placement picks
(:mod:`storg.server.files.placement`), in parallel.  A chunk counts once a
majority of its holders have it fsynced; the others get
``all_copies_grace`` seconds more, so a healthy cluster records every copy.
A chunk the cluster already holds is not sent again: the entry refers to
it with no holders, and the state machine refuses the put if a concurrent
delete collected it meanwhile.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg.node.raft_node import RaftNode
from storg.server.client_port import RequestError
from storg.server.files.applied import AppliedWaiter
from storg.server.files.chunk_io import ChunkUnavailable, RemoteChunks
from storg.server.files.chunk_ops import ChunkOps
from storg.server.files.pins import CollectGuard
from storg.server.files.placement import place
from storg.server.files.reserve import DiskReserve, is_disk_full
from storg.wire import ErrorCode
from storg.wire.chunks import ChunkPutAfter, ChunkStored
from storg.wire.files import ChunkRef


class ChunkReplicator:
    """Writes chunks to their holders for this leader, and tracks the bytes placed in flight."""

    def __init__(self, node: RaftNode, fsm: Any, *, ops: ChunkOps, remote: RemoteChunks,
                 applied: AppliedWaiter, guard: CollectGuard, reactor: Any,
                 replication_factor: int, unreachable: Callable[[], frozenset[str]],
                 all_copies_grace: float = 2.0, reserve: DiskReserve | None = None) -> None:
        self.node = node
        self.fsm = fsm
        self.ops = ops
        self.remote = remote
        self.applied = applied
        self.guard = guard
        self.reactor = reactor
        self.replication_factor = replication_factor
        self.unreachable = unreachable
        self.all_copies_grace = all_copies_grace
        self.reserve = reserve
        """This node's disk reserve: its own copies are refused below it, like a holder's."""
        self.stats: Counter[str] = Counter()
        self._pending_usage: Counter[str] = Counter()
        self._placements: Counter[tuple[str, str]] = Counter()
        """(chunk hash, holder) of the copies uploads in flight placed: what ChunkPlacedQuery asks."""

    def copies(self) -> tuple[list[str], int]:
        """(the voters, sorted; how many copies each chunk gets: R capped by the voters)."""
        voters = sorted(self.node.core.conf.voters)
        return voters, min(self.replication_factor, len(voters))

    @defer.inlineCallbacks
    def replicate(self, chunk: bytes, pins: list[str], placed: list[tuple[str, int, str]] | None = None):
        """Store one chunk on its holders; fires with the ChunkRef to record.

        The chunk is pinned first (this leader proposes no collect of it
        from now on), then the collect barrier is awaited, so the chunk
        map's answer about it can no longer be changed by a collect.
        """
        chunk_hash = yield self.ops.local.hash(chunk)
        self.guard.pin(chunk_hash)
        pins.append(chunk_hash)
        voters, copies = self.copies()
        need = copies // 2 + 1
        known = self.fsm.chunk(chunk_hash)
        if known is not None and len(known.holders) >= need:
            self.stats["chunks_deduplicated"] += 1
            return ChunkRef(chunk_hash, len(chunk), ())
        barrier = self.guard.barrier()
        try:
            yield self.applied.wait(barrier)
        except defer.TimeoutError:
            raise RequestError(ErrorCode.UNAVAILABLE, "the leader is not applying its log") from None
        known = self.fsm.chunk(chunk_hash)
        if known is not None and len(known.holders) >= need:
            self.stats["chunks_deduplicated"] += 1
            return ChunkRef(chunk_hash, len(chunk), ())
        holders = place(chunk_hash, voters, copies, self.projected_usage(), self.unreachable())
        placed = placed if placed is not None else []
        for holder in holders:
            self._pending_usage[holder] += len(chunk)
            self._placements[(chunk_hash, holder)] += 1
            placed.append((holder, len(chunk), chunk_hash))
        acked = yield self._store_on_holders(chunk_hash, chunk, holders, need, barrier, verified=True)
        self.stats["chunks_stored"] += 1
        return ChunkRef(chunk_hash, len(chunk), tuple(sorted(acked)))

    def projected_usage(self) -> dict[str, int]:
        """Bytes per node: the chunk map's, plus what uploads in flight have placed (leader)."""
        usage = Counter(self.fsm.usage())
        usage.update(self._pending_usage)
        return dict(usage)

    def unplace(self, placed: list[tuple[str, int, str]]) -> None:
        """An upload is over (applied, so the chunk map counts its bytes, or failed)."""
        for holder, size, chunk_hash in placed:
            self._pending_usage[holder] -= size
            if self._pending_usage[holder] <= 0:
                del self._pending_usage[holder]
            key = (chunk_hash, holder)
            self._placements[key] -= 1
            if self._placements[key] <= 0:
                del self._placements[key]
        placed.clear()

    def is_placed(self, chunk_hash: str, holder: str) -> bool:
        """Did an upload in flight on this leader place ``chunk_hash`` on ``holder``?"""
        return self._placements.get((chunk_hash, holder), 0) > 0

    def inline_holders(self, data: bytes) -> list[str]:
        """Where a small file's bytes are written on apply: placed like any chunk."""
        voters, copies = self.copies()
        if copies == len(voters):
            # Every voter holds it (a cluster of R voters or fewer): ranking
            # them, which hashes the data and the usage map, changes nothing.
            return voters
        return place(hashlib.sha256(data).hexdigest(), voters, copies, self.projected_usage(),
                     self.unreachable())

    def store_on(self, holder: str, chunk_hash: str, data: bytes, index: int,
                 verified: bool = False) -> defer.Deferred:
        """Store a chunk durably on ``holder`` once it has applied up to ``index``; fires with holder.

        ``verified``: this process hashed ``data`` to ``chunk_hash`` itself (see ChunkStore.put).
        """
        if holder == self.node.node_id:
            if self.reserve is not None:
                if self.reserve.below():
                    return defer.fail(self.reserve.refusal(f"a copy of chunk {chunk_hash[:12]}"))
                self.reserve.charge(len(data))
            return self.ops.put(chunk_hash, data, verified=verified).addCallback(lambda _: holder)
        return self._put_remote(holder, chunk_hash, data, index)

    @defer.inlineCallbacks
    def _put_remote(self, holder: str, chunk_hash: str, data: bytes, index: int):
        remote = self.remote
        conn = yield remote.connection(holder)
        d = conn.request(lambda rid: ChunkPutAfter(rid, chunk_hash, index, data))
        d.addTimeout(remote.timeout, self.reactor)
        reply = yield d
        if not isinstance(reply, ChunkStored) or reply.hash != chunk_hash:
            raise ChunkUnavailable(f"{holder} answered {type(reply).__name__} to a chunk put")
        return holder

    def _store_on_holders(self, chunk_hash: str, chunk: bytes, holders: list[str],
                          need: int, index: int = 0, verified: bool = False) -> defer.Deferred:
        """Fires with the holders that acknowledged, once all did, or a majority did and
        the others failed or had ``all_copies_grace`` seconds more; fails below a majority."""
        done: defer.Deferred = defer.Deferred()
        acked: list[str] = []
        failed: list[str] = []
        full: list[str] = []
        grace_call: list[Any] = []

        def settle() -> None:
            if done.called:
                return
            if len(acked) + len(failed) == len(holders):
                if len(acked) >= need:
                    finish()
                else:
                    # Full holders will not be less full in a second: DISK_FULL ends
                    # the client's put with the reason, where UNAVAILABLE would
                    # have it retry until its timeout.
                    done.errback(RequestError(
                        ErrorCode.DISK_FULL if full else ErrorCode.UNAVAILABLE,
                        f"chunk {chunk_hash[:12]} reached only {len(acked)} of {len(holders)} "
                        f"holders ({'; '.join(failed)})"))
            elif len(acked) >= need and not grace_call:
                grace_call.append(self.reactor.callLater(self.all_copies_grace, finish))

        def finish() -> None:
            if not done.called:
                for call in grace_call:
                    if call.active():
                        call.cancel()
                done.callback(list(acked))

        def ok(holder: str) -> None:
            acked.append(holder)
            settle()

        def bad(failure: Any, holder: str) -> None:
            failed.append(f"{holder}: {failure.getErrorMessage()}")
            if is_disk_full(failure):
                full.append(holder)
            settle()

        for holder in holders:
            self.store_on(holder, chunk_hash, chunk, index, verified).addCallbacks(
                ok, bad, errbackArgs=(holder,))
        return done
