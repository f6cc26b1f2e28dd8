"""Changes to this node's chunk files, per chunk in the order they were issued.

A thread pool runs jobs in any order; storg needs a collect's delete, a
write and an orphan delete of one chunk to run in the order they were
decided.  :class:`ChunkOps` keeps that order and batches small-file writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from storg.storage.chunks import ChunkStore


def _put_and_touch(store: ChunkStore, data: bytes, chunk_hash: str, durable: bool,
                   verified: bool = False) -> str:
    """Store a chunk and make its file look new, so the orphan collector's grace starts again.

    ``put`` of a chunk already intact here is a no-op that leaves an old
    mtime; without the touch, a copy about to be recorded could be taken
    for an old orphan.  ``verified``: see :meth:`ChunkStore.put`.
    """
    store.put(data, chunk_hash, durable=durable, verified=verified)
    try:
        os.utime(store.path(chunk_hash))
    except FileNotFoundError:
        store.put(data, chunk_hash, durable=durable, verified=verified)
    return chunk_hash


def _delete_older(store: ChunkStore, hashes: list[str], cutoff: float) -> int:
    """Delete the chunk files last written before ``cutoff``; the check is redone here, in order."""
    removed = 0
    for chunk_hash in hashes:
        try:
            if store.path(chunk_hash).stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        removed += store.delete(chunk_hash)
    return removed


def _delete_all(store: ChunkStore, hashes: list[str]) -> int:
    return sum(1 for h in hashes if store.delete(h))


def _put_many(store: ChunkStore, jobs: list[tuple[str, bytes, bool]]) -> list[Any]:
    """Write several chunks in one pool job; each one's outcome: its hash, or the Failure that stopped it."""
    outcomes: list[Any] = []
    for chunk_hash, data, durable in jobs:
        try:
            outcomes.append(_put_and_touch(store, data, chunk_hash, durable))
        except Exception:  # reported to that chunk's waiter, the others go on
            outcomes.append(Failure())
    return outcomes


class ChunkOps:
    """Changes to this node's chunk files, run per chunk in the order they are issued.

    The thread pool runs jobs in any order; a collect's delete issued at
    apply, then a write of the same chunk issued later, must not run the
    other way round.  Each chunk with work pending has a tail Deferred; a
    new job for it starts when the tail fires.  A batch (a collect's
    thousand deletes) is one job that waits for all its chunks' tails.

    Small files' writes at apply (:meth:`put_batched`) are gathered for up
    to ``batch_delay`` seconds, or ``batch_max`` files, and written by one
    pool job: a pool job per put cost every node about 0.1 ms of CPU for
    the thread hand-off alone, and with three nodes and a client sharing
    two cores that was a third of a small put's whole cost.  Their order
    against other jobs on the same chunk is kept as for any job.
    """

    def __init__(self, local: Any, reactor: Any = None, batch_delay: float = 0.02,
                 batch_max: int = 512) -> None:
        self.local = local
        self.store: ChunkStore = local.store
        self.reactor = reactor
        self.batch_delay = batch_delay
        self.batch_max = batch_max
        self._tails: dict[str, defer.Deferred] = {}
        self._last_fn: dict[str, Callable[..., Any]] = {}
        self._batch: list[tuple[str, bytes, bool, defer.Deferred]] = []
        self._batch_call: Any = None

    def busy(self, chunk_hash: str) -> bool:
        return chunk_hash in self._tails

    def write_queued(self, chunk_hash: str) -> bool:
        """Whether the last job queued on ``chunk_hash`` writes it (no delete after it).

        Another write of the same chunk (the same bytes: the store checks
        them against the hash) would then change nothing.
        """
        return self._last_fn.get(chunk_hash) is _put_and_touch

    def run(self, hashes: list[str], fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` in the pool after every earlier job on ``hashes``; fires with its result."""
        return self._after(hashes, fn, lambda: self.local.run(fn, *args))

    def _after(self, hashes: list[str], fn: Callable[..., Any],
               launch: Callable[[], defer.Deferred]) -> defer.Deferred:
        """Call ``launch`` once every earlier job on ``hashes`` is over; fires with its outcome."""
        before = [self._tails[h] for h in hashes if h in self._tails]
        tail: defer.Deferred = defer.Deferred()
        for h in hashes:
            self._tails[h] = tail
            self._last_fn[h] = fn
        result: defer.Deferred = defer.Deferred()

        def finish(outcome: Any) -> None:
            for h in hashes:
                if self._tails.get(h) is tail:
                    del self._tails[h]
                    del self._last_fn[h]
            tail.callback(None)
            result.callback(outcome)

        def start(_: Any = None) -> None:
            launch().addBoth(finish)

        if not before:
            start()
        elif len(before) == 1:
            before[0].addCallback(start)
        else:
            defer.DeferredList(before).addCallback(start)
        return result

    def put_batched(self, chunk_hash: str, data: bytes) -> defer.Deferred:
        """Write a chunk without fsync (see ChunkStore.put), in the next batch; fires when written."""
        if self.reactor is None:
            return self.put(chunk_hash, data, durable=False)
        return self._after([chunk_hash], _put_and_touch, lambda: self._join_batch(chunk_hash, data, False))

    def _join_batch(self, chunk_hash: str, data: bytes, durable: bool) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self._batch.append((chunk_hash, data, durable, done))
        if len(self._batch) >= self.batch_max:
            self.flush()
        elif self._batch_call is None:
            self._batch_call = self.reactor.callLater(self.batch_delay, self.flush)
        return done

    def flush(self) -> None:
        """Start writing the gathered batch now (before a sync, or when it is full)."""
        if self._batch_call is not None:
            if self._batch_call.active():
                self._batch_call.cancel()
            self._batch_call = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        jobs = [(h, data, durable) for h, data, durable, _ in batch]

        def settle(outcomes: Any) -> None:
            if isinstance(outcomes, Failure):  # the pool itself failed: every write did
                outcomes = [outcomes] * len(batch)
            for (_, _, _, done), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Failure):
                    done.errback(outcome)
                else:
                    done.callback(outcome)

        self.local.run(_put_many, self.store, jobs).addBoth(settle)

    def put(self, chunk_hash: str, data: bytes, durable: bool = True,
            verified: bool = False) -> defer.Deferred:
        return self.run([chunk_hash], _put_and_touch, self.store, data, chunk_hash, durable, verified)

    def delete(self, hashes: list[str]) -> defer.Deferred:
        hashes = list(dict.fromkeys(hashes))
        return self.run(hashes, _delete_all, self.store, hashes)

    def delete_older(self, hashes: list[str], cutoff: float) -> defer.Deferred:
        hashes = list(dict.fromkeys(hashes))
        return self.run(hashes, _delete_older, self.store, hashes, cutoff)
