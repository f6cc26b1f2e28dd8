"""Fill: fetch at once the chunk copies this node is recorded as holding but lacks.

A node can be a recorded holder of a chunk whose file it never wrote or
has lost: it installed the leader's snapshot (a small file's bytes ride in
its log entry, which the snapshot replaced, and every copy the node missed
while away is recorded in the map it just took over), it was restarted
after a crash lost unsynced writes, or a file was deleted by hand.  Scrub
finds these too, but only on its daily pass, and it re-reads and re-hashes
every chunk to do so; leader repair only counts holders, it never asks
whether a recorded copy is really there.

So right after a snapshot install, and once when the node starts, a fill
pass walks the chunk map in slices of ``SCAN_SLICE`` (one reactor turn
each), asks the local store which of the chunks that name this node (and
that some file still refers to) have no file, with one ``stat`` per chunk
in the chunk thread pool, and fetches each absent one, verified, from
another holder.  Nothing goes through Raft: the map already says the copy
is here.  It shares scrub's rate limiter, so the node's background chunk
traffic stays within ``scrub_rate_mb_s`` together.

A pass requested while one runs is coalesced into one more pass after it
(the map may have been replaced meanwhile).  Chunks no holder could serve
(holders down, a whole cluster restarting) are retried by a new pass after
each of ``RETRY_DELAYS`` in turn, with one log line each time; after the
last, they are left to scrub.  Each copy fetched is added to scrub's
"missing" and "repaired" counters, so ``storgctl scrub`` shows it, and is
counted apart in :attr:`ChunkFiller.counters`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from storg.node.raft_node import RaftNode
from storg.server.files.chunk_io import Chunks, ChunkUnavailable
from storg.server.files.chunk_ops import ChunkOps
from storg.server.upkeep.pacing import SCAN_SLICE, RateLimiter
from storg.storage.chunks import ChunkStore

log = Logger(namespace="storg.fill")

RETRY_DELAYS = (3.0, 15.0, 60.0)
"""Seconds before each new pass while some chunks could not be fetched; then scrub's turn."""

PARALLEL = 4
"""Fetches in flight at once: hides a round trip per chunk; the limiter sets the pace."""


def absent(store: ChunkStore, hashes: Sequence[str]) -> list[str]:
    """The hashes with no chunk file in ``store`` (a stat each; runs in a thread)."""
    return [h for h in hashes if not store.has(h)]


class ChunkFiller:
    """One node's fill passes (see the module docstring)."""

    def __init__(self, node: RaftNode, fsm: Any, reactor: Any, *, chunks: Chunks, ops: ChunkOps,
                 limiter: RateLimiter, scrub_counters: Counter[str],
                 retry_delays: Sequence[float] = RETRY_DELAYS, parallel: int = PARALLEL) -> None:
        self.node = node
        self.fsm = fsm
        self.reactor = reactor
        self.chunks = chunks
        self.ops = ops
        self.limiter = limiter
        """Scrub's: fill and scrub move bytes at one pace between them."""
        self.scrub_counters = scrub_counters
        """A filled copy counts as a missing copy found and restored (``storgctl scrub``)."""
        self.retry_delays = tuple(retry_delays)
        self.parallel = parallel
        self.counters: Counter[str] = Counter()
        """passes, fetched, bytes_fetched; unavailable: chunks the last pass could not fetch."""
        self._pass: defer.Deferred | None = None
        self._waiters: list[defer.Deferred] = []
        self._next_waiters: list[defer.Deferred] = []
        self._again = False
        self._attempt = 0
        self._retry_call: Any = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._pass is not None

    def trigger(self) -> defer.Deferred:
        """Ask for a pass; fires (never fails) once a pass started at or after this call ends.

        A fresh request (a new snapshot, a start) also restarts the retry
        schedule.
        """
        self._attempt = 0
        self._cancel_retry()
        return self._request()

    def stop(self) -> None:
        self._stopped = True
        self._cancel_retry()

    def _request(self) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        if self._stopped:
            waiter.callback(None)
        elif self._pass is None:
            self._waiters.append(waiter)
            self._start()
        else:
            self._again = True
            self._next_waiters.append(waiter)
        return waiter

    def _start(self) -> None:
        d = self._run_pass()
        self._pass = d
        d.addBoth(self._pass_over)

    def _pass_over(self, result: Any) -> None:
        self._pass = None
        unavailable = 0
        if isinstance(result, Failure):
            log.failure("fill pass failed", result)
        else:
            unavailable = result or 0
        waiters, self._waiters = self._waiters, []
        if self._again and not self._stopped:
            self._again = False
            self._waiters, self._next_waiters = self._next_waiters, []
            self._start()
        elif unavailable and not self._stopped:
            self._schedule_retry(unavailable)
        for waiter in waiters:
            waiter.callback(None)
        if self._stopped:
            for waiter in self._next_waiters:
                waiter.callback(None)
            self._next_waiters = []

    def _schedule_retry(self, unavailable: int) -> None:
        if self._attempt >= len(self.retry_delays):
            log.warn("fill: {n} chunks recorded on {node} are still missing; leaving them to scrub",
                     n=unavailable, node=self.node.node_id)
            return
        delay = self.retry_delays[self._attempt]
        self._attempt += 1
        log.info("fill: {n} chunks recorded on {node} could not be fetched (holders down?); "
                 "trying again in {delay:g} s", n=unavailable, node=self.node.node_id, delay=delay)
        self._retry_call = self.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._request()

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _wanted(self, chunk_hash: str) -> bool:
        """Still recorded here and still referred to by some file: worth a copy."""
        chunk = self.fsm.chunk(chunk_hash)
        return chunk is not None and chunk.refs > 0 and self.node.node_id in chunk.holders

    @defer.inlineCallbacks
    def _run_pass(self):
        """One walk over the map; fires with how many absent chunks could not be fetched."""
        started = time.monotonic()
        me = self.node.node_id
        local = self.chunks.local
        digests = self.fsm.chunk_digests()
        before = Counter(self.counters)
        unavailable: list[str] = []
        semaphore = defer.DeferredSemaphore(self.parallel)
        for start in range(0, len(digests), SCAN_SLICE):
            if start:
                yield task.deferLater(self.reactor, 0, lambda: None)
            if self._stopped:
                return 0
            mine = []
            for digest in digests[start:start + SCAN_SLICE]:
                chunk = self.fsm.chunk_by_digest(digest)
                if chunk is not None and chunk.refs > 0 and me in chunk.holders:
                    mine.append(digest.hex())
            if not mine:
                continue
            missing = yield local.run(absent, local.store, mine)
            if not missing or self._stopped:
                continue
            results = yield defer.DeferredList(
                [semaphore.run(self._fetch, h) for h in missing], consumeErrors=True)
            for chunk_hash, (ok, value) in zip(missing, results, strict=True):
                if not ok:
                    log.failure("fill: storing chunk {h} failed", value, LogLevel.error, h=chunk_hash)
                    unavailable.append(chunk_hash)
                elif value is False:
                    unavailable.append(chunk_hash)
        self.counters["passes"] += 1
        self.counters["unavailable"] = len(unavailable)
        fetched = self.counters["fetched"] - before["fetched"]
        if fetched or unavailable:
            log.info("fill: {node} fetched {n} missing chunks ({mib:.1f} MiB) in {s:.1f} s; "
                     "{u} could not be fetched", node=me, n=fetched,
                     mib=(self.counters["bytes_fetched"] - before["bytes_fetched"]) / (1 << 20),
                     s=time.monotonic() - started, u=len(unavailable))
        return len(unavailable)

    @defer.inlineCallbacks
    def _fetch(self, chunk_hash: str):
        """Copy one absent chunk here; True if stored or no longer wanted, False if unavailable."""
        if self._stopped or not self._wanted(chunk_hash):
            return True  # collected or moved while the pass went on
        chunk = self.fsm.chunk(chunk_hash)
        yield self.limiter.reserve(chunk.size)
        others = sorted(h for h in chunk.holders if h != self.node.node_id)
        try:
            data = yield self.chunks.read(chunk_hash, others)
        except ChunkUnavailable:
            return False
        if self._stopped or not self._wanted(chunk_hash):
            return True
        # Issued in this reactor turn, right after the check: a collect applied
        # from now on queues its delete behind this write (ChunkOps' order).
        yield self.ops.put(chunk_hash, data)
        self.counters["fetched"] += 1
        self.counters["bytes_fetched"] += len(data)
        scrub = self.scrub_counters
        scrub["missing_copies"] += 1
        scrub["repairs_done"] += 1
        return True
