"""Scrub: every node re-reads and re-hashes the chunks it is recorded as holding.

Disks rot quietly: a chunk read once at upload may be unreadable a year
later, and the copy count in the chunk map says nothing about it.  So each
node walks the chunk map (not its folder: a copy the map does not count is
garbage collection's business) and, for every chunk that names it as a
holder, reads the file back and checks its SHA-256, paced to
``scrub_rate_mb_s``.  A damaged copy is logged, deleted and replaced with a
verified copy from another holder; a missing one (a small file's write lost
in a crash, a copy deleted by hand) is fetched the same way.  The node stays
a recorded holder throughout: nothing goes through Raft.

Re-encryption.  With encryption at rest, the pass is also the
re-encryption pass after a key rotation (``storgctl keys reencrypt`` starts
one): every chunk it checks that is sealed with another key than the
active one is sealed again under it (paced with the checks, since it reads
the bytes anyway); at the end of the pass every chunk file still under an
old key (one the map does not count here, or one busy when the walk came
by) is resealed too, found by its header alone, and then the log's
segments and the snapshot are resealed on the storage thread.  Once a pass has ended on
every node, no record names the old key and it can leave the key file.

Counters (``storgctl scrub``): passes, chunks and bytes checked, bad and
missing copies found, copies restored, and chunks with fewer than R member
holders as of the last pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.node.raft_node import RaftNode
from storg.server.files.chunk_io import Chunks, ChunkUnavailable
from storg.server.files.chunk_ops import ChunkOps
from storg.server.upkeep.pacing import SCAN_SLICE, RateLimiter
from storg.storage.errors import ChunkNotFoundError, CorruptionError
from storg.storage.keys import UnknownKeyError

log = Logger(namespace="storg.scrub")


class Scrubber:
    """One node's background scrub."""

    def __init__(self, node: RaftNode, fsm: Any, reactor: Any, *, chunks: Chunks, ops: ChunkOps,
                 replication_factor: int, rate: float, interval: float,
                 reseal_log: Callable[[], defer.Deferred] | None = None) -> None:
        self.node = node
        self.reseal_log = reseal_log
        """Encryption at rest: reseals the log and the snapshot under the active key (storage thread)."""
        self.fsm = fsm
        self.reactor = reactor
        self.chunks = chunks
        self.ops = ops
        self.replication_factor = replication_factor
        self.interval = interval
        self.limiter = RateLimiter(self.reactor, rate)
        self.counters: Counter[str] = Counter()
        self.under_replicated = 0
        self._loop: LoopingCall | None = None
        self._pass: defer.Deferred | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._pass is not None

    def start(self) -> None:
        self._loop = LoopingCall(self.start_pass)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("scrub loop stopped", f))

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def start_pass(self) -> defer.Deferred:
        """Begin a pass unless one is running; fires when the running pass ends."""
        if self._pass is None:
            d = self._run_pass()
            self._pass = d

            def done(result: Any) -> None:
                self._pass = None
                if isinstance(result, Failure):
                    log.failure("scrub pass failed", result)

            d.addBoth(done)
        waiter: defer.Deferred = defer.Deferred()
        if self._pass is None:
            waiter.callback(None)
        else:
            def ended(result: object) -> object:
                waiter.callback(None)
                return result

            self._pass.addBoth(ended)
        return waiter

    @defer.inlineCallbacks
    def _run_pass(self):
        me = self.node.node_id
        digests = self.fsm.chunk_digests()
        under = 0
        for start in range(0, len(digests), SCAN_SLICE):
            if start:
                yield task.deferLater(self.reactor, 0, lambda: None)
            if self._stopped:
                return
            conf = self.node.core.conf
            members = conf.members()
            want = min(self.replication_factor, len(conf.voters))
            for digest in digests[start:start + SCAN_SLICE]:
                chunk = self.fsm.chunk_by_digest(digest)
                if chunk is None:
                    continue
                if chunk.refs and sum(1 for h in chunk.holders if h in members) < want:
                    under += 1
                if me not in chunk.holders:
                    continue
                yield self.limiter.reserve(chunk.size)
                if self._stopped:
                    return
                yield self._check(digest.hex())
        self.under_replicated = under
        if self.reseal_log is not None:
            yield self._reseal_stale_chunks()
            resealed = yield self.reseal_log()
            self.counters["records_resealed"] += resealed
            if resealed or self.counters["chunks_resealed"]:
                log.info("re-encryption: {n} log records and snapshots resealed under the active key, "
                         "{c} chunks so far", n=resealed, c=self.counters["chunks_resealed"])
        self.counters["passes"] += 1

    @defer.inlineCallbacks
    def _reseal_stale_chunks(self):
        """Reseal every chunk file still under an old key, recorded here or not, at scrub's pace."""
        local = self.chunks.local
        stale = yield local.run(local.store.stale_chunks)
        for chunk_hash in stale:
            if self._stopped:
                return
            chunk = self.fsm.chunk(chunk_hash)
            yield self.limiter.reserve(chunk.size if chunk is not None else 1 << 20)
            try:
                resealed = yield self.ops.run([chunk_hash], local.store.reseal, chunk_hash)
            except Exception as exc:  # damaged or gone meanwhile: scrub and garbage collection see to it
                log.info("re-encryption: chunk {h} not resealed: {why}", h=chunk_hash, why=exc)
                continue
            self.counters["chunks_resealed"] += resealed

    @defer.inlineCallbacks
    def _check(self, chunk_hash: str):
        """Re-read one chunk; restore it from another holder if it is damaged or missing."""
        if self.ops.busy(chunk_hash):
            # A write or delete of it is queued (a small file applied a moment
            # ago is written in a batch): its file may not be there yet.  The
            # next pass checks it.
            return
        local = self.chunks.local
        try:
            data = yield local.get(chunk_hash)
        except ChunkNotFoundError:
            if not self._still_mine(chunk_hash):
                return  # collected or moved while the pass went on
            self.counters["missing_copies"] += 1
            log.warn("scrub: chunk {h} is recorded here but missing", h=chunk_hash)
        except UnknownKeyError as exc:
            # Sealed with a key the key file no longer holds: not damage, and never rewritten.
            self.counters["unreadable_copies"] += 1
            log.warn("scrub: chunk {h} cannot be read here: {why}", h=chunk_hash, why=exc)
            return
        except CorruptionError as exc:
            self.counters["bad_copies"] += 1
            log.warn("scrub: bad copy of chunk {h}: {why}; removing it", h=chunk_hash, why=exc)
            yield self.ops.delete([chunk_hash])
        else:
            self.counters["chunks_checked"] += 1
            self.counters["bytes_checked"] += len(data)
            if local.store.keyring is not None:
                resealed = yield self.ops.run([chunk_hash], local.store.reseal, chunk_hash)
                self.counters["chunks_resealed"] += resealed
            return
        self.counters["chunks_checked"] += 1
        yield self._restore(chunk_hash)

    def _still_mine(self, chunk_hash: str) -> bool:
        chunk = self.fsm.chunk(chunk_hash)
        return chunk is not None and self.node.node_id in chunk.holders

    @defer.inlineCallbacks
    def _restore(self, chunk_hash: str):
        chunk = self.fsm.chunk(chunk_hash)
        if chunk is None or self.node.node_id not in chunk.holders:
            return
        others = sorted(h for h in chunk.holders if h != self.node.node_id)
        try:
            data = yield self.chunks.read(chunk_hash, others)
        except ChunkUnavailable as exc:
            log.warn("scrub: cannot restore chunk {h} yet: {why}", h=chunk_hash, why=exc)
            return
        if not self._still_mine(chunk_hash):
            return
        yield self.ops.put(chunk_hash, data)
        self.counters["repairs_done"] += 1
        log.info("scrub: restored chunk {h} from another holder", h=chunk_hash)
