"""The file store's data path on a node: uploads, downloads, listings, deletes, chunk traffic.

Put (leader only): the client streams ``PutData`` frames; the leader cuts
them into chunks of ``chunk_size``, hashes each, and stores it on the
holders placement picks, in parallel and with a bounded number of bytes in
flight (past it the leader stops reading the client's socket).  A chunk
counts once a majority of its holders have it fsynced (the others get a
short grace to finish, so a healthy cluster records every copy).  A chunk
the cluster already holds is not sent again: the metadata entry refers to it
with no holders, and the state machine refuses the put if a concurrent
delete collected it meanwhile.  When the client's ``PutEnd`` matches what
arrived (size and SHA-256), one ``PutFileCommand`` is proposed; its apply
makes the file visible at once on every node, and answers the client.

Get, ls, stat (any node): a ReadIndex round first unless ``stale``; then
chunks stream from the local store or from a holder, each verified against
its hash before a byte of it is sent, with the next few chunks read (and
verified, in the pool) while the current one is being sent, and sent
without copying their payload (storg.net.framing.send_bulk).

Placement: each fresh chunk goes to the R voters holding the fewest bytes
(the chunk map's per-node totals plus what uploads in flight have placed),
reachable ones first, ties broken by rendezvous hashing; so copies spread
evenly and a new node fills up first.

Garbage: chunks no file refers to are collected by the leader through the
log (``CollectChunksCommand``), never while an upload on this leader uses
them; chunk files that never made it into the chunk map (an upload whose
client went away), or whose node is no longer a recorded holder (repair
moved the copy elsewhere), are deleted by each node after a grace period.

The race between a collect and a new upload of the same bytes is closed in
three places.  A dedup reuse is refused by the state machine if the chunk
is gone at apply time (ChunkMissing; the client retries).  A fresh copy is
only written once the writer has applied every collect the leader could
have proposed before it pinned the chunk (the *collect barrier*, sent along
in ``ChunkPutAfter``), so no collect entry deletes a copy about to be
recorded.  And on every node the changes to one chunk's file (write,
collect's delete, orphan delete) run in the order they were issued
(:class:`ChunkOps`), not in whatever order a thread pool picks.

Repair (the leader) and scrub (every node) live in storg.server.upkeep.repair and
storg.server.upkeep.scrub; this service owns them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.logger import Logger

from storg.config import FileTuning
from storg.node.raft_node import RaftNode
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.raft.types import Role
from storg.server.files.chunk_io import ChunkUnavailable, Chunks
from storg.server.client_port import ClientConnection, RequestError
from storg.net.framing import send_bulk
from storg.wire.bulk import BULK_MIN
from storg.storage.chunks import ChunkStore
from storg.storage.errors import ChunkNotFoundError, CorruptionError, HashMismatchError
from storg.wire import CODEC, ErrorCode
from storg.wire.files import (
    ChunkData, ChunkGet, ChunkPut, ChunkPutAfter, ChunkRef, ChunkStored, CollectChunksCommand,
    GetData, GetEnd, GetRequest, GetStart, LsReply, LsRequest, PutData, PutDone, PutEnd,
    PutFileCommand, PutInlineCommand, PutReady, PutStart, RemoveFileCommand, RmDone, RmRequest,
    ScrubStatusReply, ScrubStatusRequest, StatReply, StatRequest,
)

log = Logger(namespace="storg.files")

MAX_DATA_FRAME = 1 << 20
"""Largest PutData/GetData payload a client is asked to send."""

LS_PAGE = 1000

GET_READ_AHEAD = 3
"""Chunks a get reads (and verifies) ahead of the one being sent: a few MiB per get."""

INLINE_MAX = 4096
"""Files up to this size ride in their metadata entry (PutInlineCommand).

A put of a small file through the chunk path costs a round of chunk
writes, each with two fsyncs on every holder, before the Raft commit; in
the entry, the commit's own group-committed fsync makes the bytes durable
and the holders write them on apply, fsyncing in one batch before the log
is compacted past them.  4 KiB keeps the in-memory Raft log bounded
(``snapshot_every`` entries of at most 4 KiB each).  Measured with
benchmarks/file_bench.py: see the README.
"""


SMALL_CACHE_BYTES = 16 << 20
"""Memory for the small files a node keeps to serve gets without reading the disk."""


class SmallChunkCache:
    """Small chunks (at most INLINE_MAX bytes) recently applied or read here, least recently used out.

    Only bytes known to hash to their key go in (an inline entry's data,
    hashed at apply; a chunk read and verified), so serving from here keeps
    the rule that no byte is sent unverified; a copy damaged on disk later
    is scrub's business.  A small get then costs no open, read and re-hash.
    """

    def __init__(self, max_bytes: int = SMALL_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, chunk_hash: str) -> bytes | None:
        data = self._data.get(chunk_hash)
        if data is not None:
            self._data.move_to_end(chunk_hash)
        return data

    def put(self, chunk_hash: str, data: bytes) -> None:
        """Keep ``data``, which the caller has checked hashes to ``chunk_hash``."""
        if len(data) > INLINE_MAX or self.max_bytes <= 0:
            return
        old = self._data.pop(chunk_hash, None)
        if old is not None:
            self._bytes -= len(old)
        self._data[chunk_hash] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, dropped = self._data.popitem(last=False)
            self._bytes -= len(dropped)

    def discard(self, hashes: Any) -> None:
        for chunk_hash in hashes:
            old = self._data.pop(chunk_hash, None)
            if old is not None:
                self._bytes -= len(old)


APPLY_WAIT = 10.0
"""Seconds a node waits to catch up to a ChunkPutAfter's index before refusing the chunk."""


def rendezvous(chunk_hash: str, node: str) -> bytes:
    """The rank of ``node`` for ``chunk_hash``: the same on every node, different per chunk."""
    return hashlib.sha256(f"{chunk_hash}/{node}".encode()).digest()


def place(chunk_hash: str, nodes: list[str], copies: int, usage: dict[str, int] | None = None,
          avoid: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The ``copies`` nodes a chunk goes to: least used first, never two copies on one node.

    ``usage`` is bytes held per node; nodes in ``avoid`` (unreachable) come
    last.  Ties, which are all there is on an empty cluster, go by
    rendezvous hashing, so chunks of equal usage still spread over the
    nodes instead of all ranking the same one first.
    """
    usage = usage or {}
    ranked = sorted(set(nodes), key=lambda n: (n in avoid, usage.get(n, 0), rendezvous(chunk_hash, n)))
    return ranked[:copies]


class AppliedWaiter:
    """Deferreds that fire once this node has applied the log up to an index."""

    def __init__(self, node: RaftNode, reactor: Any, poll: float = 0.05) -> None:
        self.node = node
        self.reactor = reactor
        self.poll = poll
        self._waiting: list[tuple[int, defer.Deferred]] = []
        self._call: Any = None
        node.on_applied(self._check)

    def wait(self, index: int, timeout: float = APPLY_WAIT) -> defer.Deferred:
        """Fires with the applied index, or fails with defer.TimeoutError after ``timeout``."""
        if self.node.applied_index >= index:
            return defer.succeed(self.node.applied_index)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((index, d))
        d.addTimeout(timeout, self.reactor)
        self._schedule()
        return d

    def _schedule(self) -> None:
        # A snapshot install moves the applied index without an on_applied call: poll too.
        if self._waiting and (self._call is None or not self._call.active()):
            self._call = self.reactor.callLater(self.poll, self._check)

    def _check(self, _applied: Any = None) -> None:
        applied = self.node.applied_index
        waiting, self._waiting = self._waiting, []
        for index, d in waiting:
            if d.called:
                continue
            if applied >= index:
                d.callback(applied)
            else:
                self._waiting.append((index, d))
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()


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
        except Exception:  # noqa: BLE001 -- reported to that chunk's waiter, the others go on
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


def _bad_path(exc: InvalidPath) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}")


HASH_INLINE = 64 * 1024
"""An upload's first bytes up to this size are hashed on the reactor (cheap), so a small
put's digest is ready at once; past it, the whole-file hash runs in a thread."""


class SerialHasher:
    """Feeds one hasher in a thread, piece after piece in the order given.

    The whole-file SHA-256 of an upload must see the bytes in order, and a
    megabyte of it takes the reactor thread 3 to 5 ms: hashlib releases the
    GIL, so in a thread it overlaps with the reactor and the other nodes.
    """

    def __init__(self, run: Callable[..., defer.Deferred], hasher: Any) -> None:
        self.run = run  # run(fn, *args) in a thread
        self.hasher = hasher
        self._queue: deque[tuple[Any, defer.Deferred]] = deque()
        self._busy = False

    def update(self, piece: Any) -> defer.Deferred:
        """Fires once ``piece`` (and everything given before it) is hashed."""
        d: defer.Deferred = defer.Deferred()
        self._queue.append((piece, d))
        self._next()
        return d

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        piece, d = self._queue.popleft()
        self.run(self.hasher.update, piece).addBoth(self._done, d)

    def _done(self, result: Any, d: defer.Deferred) -> None:
        self._busy = False
        self._next()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)


class Upload:
    """One client's put in progress on the leader.

    A PutData frame of exactly one chunk (what the client library sends)
    becomes the chunk as it is, without a copy.  The whole-file hash of all
    but a small upload's bytes runs in a :class:`SerialHasher`; a chunk
    counts against the upload window until it is both stored and hashed.
    """

    def __init__(self, service: "FileService", conn: ClientConnection, start: PutStart, path: str) -> None:
        self.service = service
        self.conn = conn
        self.start = start
        self.path = path
        self.buffer = bytearray()
        self.size = 0
        self.hasher = hashlib.sha256()
        self.chunk_results: list[defer.Deferred] = []
        self.in_flight = 0
        self.reading_paused = False
        self.aborted: Exception | None = None
        self.pinned: list[str] = []
        self.placed: list[tuple[str, int]] = []
        self.ready: Any = None
        self.hashed = 0  # bytes of the stream fed to hasher on the reactor (the first ones)
        self.cut = 0  # bytes of the stream cut into chunks so far
        self.file_hasher: SerialHasher | None = None
        self.last_hash: defer.Deferred | None = None

    def data(self, data: bytes) -> None:
        if self.aborted is not None:
            return
        self.size += len(data)
        if self.file_hasher is None and self.size <= max(HASH_INLINE, INLINE_MAX):
            self.hasher.update(data)
            self.hashed = self.size
        size = self.service.chunk_size
        if not self.buffer and len(data) == size and isinstance(data, bytes):
            self._replicate(data)
            return
        self.buffer += data
        while len(self.buffer) >= size:
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            self._replicate(chunk)

    def _replicate(self, chunk: bytes) -> None:
        self.in_flight += len(chunk)
        if not self.reading_paused and self.in_flight > self.service.upload_window:
            self.reading_paused = True
            self.conn.pause_reading()
        # The part of this chunk not hashed on the reactor goes to the thread, in order.
        skip = min(len(chunk), max(0, self.hashed - self.cut))
        self.cut += len(chunk)
        if self.file_hasher is None:
            self.file_hasher = SerialHasher(self.service.hash_in_thread, self.hasher)
        hashed = self.file_hasher.update(memoryview(chunk)[skip:] if skip else chunk)
        self.last_hash = hashed
        d = self.service.replicate(chunk, self.pinned, self.placed)
        waiting = [2]

        def settled(result: Any) -> Any:
            waiting[0] -= 1
            if waiting[0] == 0:
                self._chunk_settled(None, len(chunk))
            return result

        d.addBoth(settled)
        hashed.addBoth(settled)
        self.chunk_results.append(d)

    def _chunk_settled(self, result: Any, size: int) -> Any:
        self.in_flight -= size
        if self.reading_paused and self.in_flight <= self.service.upload_window:
            self.reading_paused = False
            self.conn.resume_reading()
        return result

    def finish(self, end: PutEnd) -> defer.Deferred:
        """Fires with PutDone once the file's entry is applied (or fails with the refusal)."""
        if not self.chunk_results and len(self.buffer) <= INLINE_MAX and self.aborted is None:
            # A small file: no chunk round, so no generator and DeferredList either.
            try:
                data, self.buffer = bytes(self.buffer), bytearray()
                self._check_arrival(end)
                holders = tuple(sorted(self.service.inline_holders(data)))
                command = PutInlineCommand(self.start.client_id, self.start.seq, time.time_ns(),
                                           self.path, data, holders)
            except Exception:
                return defer.fail()
            request_id = self.start.request_id
            d = self.service.node.propose(CODEC.encode(command))
            return d.addCallback(lambda info: PutDone(request_id, info))
        return self._finish_chunked(end)

    def _check_arrival(self, end: PutEnd) -> None:
        sha = self.hasher.hexdigest()
        if end.size != self.size or end.sha256 != sha:
            raise RequestError(ErrorCode.INTEGRITY,
                               f"the upload arrived as {self.size} bytes with SHA-256 {sha}; "
                               f"the client sent {end.size} bytes with SHA-256 {end.sha256}")

    @defer.inlineCallbacks
    def _finish_chunked(self, end: PutEnd):
        if self.buffer:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            self._replicate(chunk)
        results = yield defer.DeferredList(self.chunk_results, consumeErrors=True)
        if self.last_hash is not None:
            yield self.last_hash  # the whole-file hash has seen every byte
        if self.aborted is not None:
            raise self.aborted
        for ok, value in results:
            if not ok:
                value.raiseException()
        self._check_arrival(end)
        command = PutFileCommand(self.start.client_id, self.start.seq, time.time_ns(), self.path,
                                 self.size, self.hasher.hexdigest(), tuple(value for _, value in results))
        info = yield self.service.node.propose(CODEC.encode(command))
        return PutDone(self.start.request_id, info)

    def abort(self, why: Exception) -> None:
        if self.aborted is None:
            self.aborted = why
            self.buffer = bytearray()
        if self.reading_paused:
            self.reading_paused = False
            self.conn.resume_reading()


class FileService:
    """Handlers for the file store's requests, and the garbage collector."""

    def __init__(self, node: RaftNode, fsm: Any, chunks: Chunks, *, replication_factor: int,
                 chunk_size: int, reactor: Any, upload_window_chunks: int = 8,
                 all_copies_grace: float = 2.0, gc_interval: float | None = None,
                 orphan_grace: float | None = None, tuning: FileTuning | None = None,
                 address_of: Callable[[str], str] = lambda node_id: "") -> None:
        from storg.server.upkeep.repair import Repairer
        from storg.server.upkeep.scrub import Scrubber

        tuning = tuning or FileTuning(replication_factor, chunk_size)
        self.tuning = tuning
        self.node = node
        self.address_of = address_of
        self.fsm = fsm
        self.chunks = chunks
        self.ops = ChunkOps(chunks.local, reactor)
        self.replication_factor = replication_factor
        self.chunk_size = chunk_size
        self.reactor = reactor
        self.upload_window = upload_window_chunks * chunk_size
        self.all_copies_grace = all_copies_grace
        self.gc_interval = gc_interval if gc_interval is not None else tuning.gc_interval_s
        self.orphan_grace = orphan_grace if orphan_grace is not None else tuning.orphan_grace_s
        self._uploads: dict[tuple[int, int], Upload] = {}
        self._pins: Counter[str] = Counter()
        self._pending_usage: Counter[str] = Counter()
        self._barrier_term = -1
        self._barrier_index = 0
        self._gc: LoopingCall | None = None
        self.stats = Counter()
        fsm.on_chunks_removed = self._chunks_removed
        fsm.on_inline_chunk = self._inline_chunk
        self._unsynced: set[str] = set()
        self._inline_writes: set[defer.Deferred] = set()
        self.small_cache = SmallChunkCache()
        self.applied = AppliedWaiter(node, reactor)
        node.on_role_change(self._role_changed)
        self.repairer = Repairer(self, grace=tuning.repair_grace_s,
                                 rate=tuning.repair_rate_mb_s * (1 << 20),
                                 interval=tuning.repair_interval_s)
        self.scrubber = Scrubber(self, rate=tuning.scrub_rate_mb_s * (1 << 20),
                                 interval=tuning.scrub_interval_s)

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {
            PutStart: self.put_start, PutData: self.put_data, PutEnd: self.put_end,
            GetRequest: self.get, LsRequest: self.ls, StatRequest: self.stat, RmRequest: self.rm,
            ChunkPut: self.chunk_put, ChunkGet: self.chunk_get, ChunkPutAfter: self.chunk_put_after,
            ScrubStatusRequest: self.scrub_status,
        }

    def start(self) -> None:
        self._gc = LoopingCall(self.collect_garbage)
        self._gc.clock = self.reactor
        self._gc.start(self.gc_interval, now=False).addErrback(
            lambda f: log.failure("garbage collection loop stopped", f))
        self.repairer.start()
        self.scrubber.start()

    def stop(self) -> None:
        if self._gc is not None and self._gc.running:
            self._gc.stop()
        self.repairer.stop()
        self.scrubber.stop()
        self.applied.stop()
        for upload in list(self._uploads.values()):
            upload.abort(RequestError(ErrorCode.UNAVAILABLE, "node stopping"))

    # -- put -------------------------------------------------------------------

    def put_start(self, req: PutStart, conn: ClientConnection) -> None:
        try:
            path = normalize_path(req.path)
        except InvalidPath as exc:
            raise _bad_path(exc) from None
        if not self.node.is_leader():
            raise RequestError(ErrorCode.NOT_LEADER, "not the leader", self._leader_address())
        key = (id(conn), req.request_id)
        if key in self._uploads:
            raise RequestError(ErrorCode.BAD_REQUEST, f"request {req.request_id} is already an upload")
        upload = Upload(self, conn, req, path)
        self._uploads[key] = upload
        conn.on_close(lambda: self._connection_gone(key))
        # Held until the frames of this read are handled: a small put's
        # client sends PutData and PutEnd without waiting for it, and if
        # they came along, the PutDone is answer enough (one reply saved).
        upload.ready = conn.send_soon(PutReady(req.request_id, MAX_DATA_FRAME))

    def put_data(self, req: PutData, conn: ClientConnection) -> None:
        upload = self._uploads.get((id(conn), req.request_id))
        if upload is None:
            raise RequestError(ErrorCode.BAD_REQUEST, f"no upload {req.request_id} on this connection")
        upload.data(req.data)

    def put_end(self, req: PutEnd, conn: ClientConnection) -> defer.Deferred:
        key = (id(conn), req.request_id)
        upload = self._uploads.get(key)
        if upload is None:
            raise RequestError(ErrorCode.BAD_REQUEST, f"no upload {req.request_id} on this connection")
        if upload.ready is not None:
            upload.ready.cancel()
        d = upload.finish(req)
        d.addBoth(self._upload_over, key)
        return d

    def _upload_over(self, result: Any, key: tuple[int, int]) -> Any:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            self.unpin(upload.pinned)
            # Applied (then the chunk map counts these bytes) or failed: no longer pending.
            self._unplace(upload.placed)
        return result

    def _connection_gone(self, key: tuple[int, int]) -> None:
        upload = self._uploads.get(key)
        if upload is not None and upload.aborted is None:
            upload.abort(RequestError(ErrorCode.UNAVAILABLE, "client went away"))
            # Its chunks stay unreferenced; garbage collection takes them.
            if not upload.chunk_results:
                self._upload_over(None, key)
            else:
                d = defer.DeferredList(upload.chunk_results, consumeErrors=True)
                d.addBoth(self._upload_over, key)

    def _role_changed(self, soft: Any) -> None:
        if soft.role != Role.LEADER and self._uploads:
            for upload in list(self._uploads.values()):
                upload.abort(RequestError(ErrorCode.NOT_LEADER, "leadership changed during the upload",
                                          self._leader_address()))

    @defer.inlineCallbacks
    def replicate(self, chunk: bytes, pins: list[str], placed: list[tuple[str, int]] | None = None):
        """Store one chunk on its holders; fires with the ChunkRef to record.

        The chunk is pinned first (this leader proposes no collect of it
        from now on), then the collect barrier is awaited, so the chunk
        map's answer about it can no longer be changed by a collect.
        """
        chunk_hash = yield self.chunks.local.hash(chunk)
        self.pin(chunk_hash)
        pins.append(chunk_hash)
        voters = sorted(self.node.core.conf.voters)
        copies = min(self.replication_factor, len(voters))
        need = copies // 2 + 1
        known = self.fsm.chunk(chunk_hash)
        if known is not None and len(known.holders) >= need:
            self.stats["chunks_deduplicated"] += 1
            return ChunkRef(chunk_hash, len(chunk), ())
        barrier = self.collect_barrier()
        try:
            yield self.applied.wait(barrier)
        except defer.TimeoutError:
            raise RequestError(ErrorCode.UNAVAILABLE, "the leader is not applying its log") from None
        known = self.fsm.chunk(chunk_hash)
        if known is not None and len(known.holders) >= need:
            self.stats["chunks_deduplicated"] += 1
            return ChunkRef(chunk_hash, len(chunk), ())
        holders = place(chunk_hash, voters, copies, self.projected_usage(), self.repairer.unreachable())
        placed = placed if placed is not None else []
        for holder in holders:
            self._pending_usage[holder] += len(chunk)
            placed.append((holder, len(chunk)))
        acked = yield self._store_on_holders(chunk_hash, chunk, holders, need, barrier, verified=True)
        self.stats["chunks_stored"] += 1
        return ChunkRef(chunk_hash, len(chunk), tuple(sorted(acked)))

    def hash_in_thread(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` in the reactor's pool: hashing for uploads, apart from the
        chunk pool, whose threads may all be waiting on fsyncs."""
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def projected_usage(self) -> dict[str, int]:
        """Bytes per node: the chunk map's, plus what uploads in flight have placed (leader)."""
        usage = Counter(self.fsm.usage())
        usage.update(self._pending_usage)
        return dict(usage)

    def _unplace(self, placed: list[tuple[str, int]]) -> None:
        for holder, size in placed:
            self._pending_usage[holder] -= size
            if self._pending_usage[holder] <= 0:
                del self._pending_usage[holder]
        placed.clear()

    def inline_holders(self, data: bytes) -> list[str]:
        """Where a small file's bytes are written on apply: placed like any chunk."""
        voters = sorted(self.node.core.conf.voters)
        copies = min(self.replication_factor, len(voters))
        if copies == len(voters):
            # Every voter holds it (a cluster of R voters or fewer): ranking
            # them, which hashes the data and the usage map, changes nothing.
            return voters
        return place(hashlib.sha256(data).hexdigest(), voters, copies, self.projected_usage(),
                     self.repairer.unreachable())

    def collect_barrier(self) -> int:
        """An index at or after every collect entry this leader's log holds or it proposed.

        Entries of earlier terms all sit below the log's end at the first
        call in a term; this leader's own collects raise it as proposed.  A
        chunk pinned now is collected by no entry above it.
        """
        if self._barrier_term != self.node.term:
            self._barrier_term = self.node.term
            self._barrier_index = self.node.core.last_index
        return self._barrier_index

    def _raise_barrier(self) -> None:
        self.collect_barrier()
        self._barrier_index = max(self._barrier_index, self.node.core.last_index)

    def store_on(self, holder: str, chunk_hash: str, data: bytes, index: int,
                 verified: bool = False) -> defer.Deferred:
        """Store a chunk durably on ``holder`` once it has applied up to ``index``; fires with holder.

        ``verified``: this process hashed ``data`` to ``chunk_hash`` itself (see ChunkStore.put).
        """
        if holder == self.node.node_id:
            return self.ops.put(chunk_hash, data, verified=verified).addCallback(lambda _: holder)
        return self._put_remote(holder, chunk_hash, data, index)

    @defer.inlineCallbacks
    def _put_remote(self, holder: str, chunk_hash: str, data: bytes, index: int):
        remote = self.chunks.remote
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
        grace_call: list[Any] = []

        def settle() -> None:
            if done.called:
                return
            if len(acked) + len(failed) == len(holders):
                if len(acked) >= need:
                    finish()
                else:
                    done.errback(RequestError(
                        ErrorCode.UNAVAILABLE,
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
            settle()

        for holder in holders:
            self.store_on(holder, chunk_hash, chunk, index, verified).addCallbacks(
                ok, bad, errbackArgs=(holder,))
        return done

    def pin(self, chunk_hash: str) -> None:
        """Keep this leader from proposing a collect of ``chunk_hash`` until :meth:`unpin`.

        Pins nest: uploads and repair pin the chunks they are about to record.
        """
        self._pins[chunk_hash] += 1

    def unpin(self, hashes: list[str]) -> None:
        """Undo one :meth:`pin` of each of ``hashes``."""
        for h in hashes:
            self._pins[h] -= 1
            if self._pins[h] <= 0:
                del self._pins[h]

    # -- reads -----------------------------------------------------------------

    def _read_point(self, stale: bool) -> defer.Deferred:
        """Fires once a linearizable read may be served here (at once for a stale read)."""
        return defer.succeed(None) if stale else self.node.read_index()

    @defer.inlineCallbacks
    def get(self, req: GetRequest, conn: ClientConnection):
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        conn.send(GetStart(req.request_id, info))
        # Reads (each one a file read and a SHA-256 in the pool) run ahead of
        # the socket by up to GET_READ_AHEAD chunks, so neither waits for the other.
        chunks = iter(info.chunks)
        pending: deque[defer.Deferred] = deque()

        def read_ahead() -> None:
            while len(pending) < GET_READ_AHEAD:
                ref = next(chunks, None)
                if ref is None:
                    return
                pending.append(self._read_chunk(ref))

        try:
            read_ahead()
            while pending:
                data = yield pending.popleft()
                read_ahead()
                yield conn.writable()
                if not conn.open:
                    return None
                if len(data) >= BULK_MIN:
                    send_bulk(conn.transport, GetData(req.request_id, data))  # no payload copy
                else:
                    conn.send(GetData(req.request_id, data))
        finally:
            for d in pending:
                d.addErrback(lambda _: None)
        return GetEnd(req.request_id)

    def _read_chunk(self, ref: ChunkRef) -> defer.Deferred:
        small = ref.size <= INLINE_MAX
        if small:
            data = self.small_cache.get(ref.hash)
            if data is not None:
                return defer.succeed(data)
        if self.ops.busy(ref.hash):
            # A write of this chunk is queued (a small file just applied):
            # read after it, then, if that fails, from wherever it is.
            d = self.ops.run([ref.hash], self.chunks.local.store.get, ref.hash)
            d.addErrback(lambda _: self.chunks.read(ref.hash, ref.holders))
        else:
            d = self.chunks.read(ref.hash, ref.holders)
        if small:
            d.addCallback(self._remember_small, ref.hash)

        def unavailable(failure: Any) -> None:
            failure.trap(ChunkUnavailable)
            raise RequestError(ErrorCode.INTEGRITY, failure.getErrorMessage())

        return d.addErrback(unavailable)

    @defer.inlineCallbacks
    def ls(self, req: LsRequest, conn: ClientConnection):
        try:
            prefix = normalize_prefix(req.prefix)
        except InvalidPath as exc:
            raise _bad_path(exc) from None
        yield self._read_point(req.stale)
        # Frozen at the read point; FileInfos built and sent a page at a time,
        # with the reactor free between pages and the socket's buffer bounded:
        # a million files is seconds of work and a hundred MB of replies.
        listing = self.fsm.listing(prefix)
        last = (max(len(listing) - 1, 0) // LS_PAGE) * LS_PAGE
        for start in range(0, last, LS_PAGE):
            conn.send(LsReply(req.request_id, tuple(listing.page(start, start + LS_PAGE)), True))
            yield conn.writable()
            yield deferLater(self.reactor, 0, lambda: None)
            if not conn.open:
                return None
        return LsReply(req.request_id, tuple(listing.page(last, len(listing))), False)

    @defer.inlineCallbacks
    def stat(self, req: StatRequest, conn: ClientConnection):
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        return StatReply(req.request_id, info)

    def _remember_small(self, data: bytes, chunk_hash: str) -> bytes:
        """Keep a small chunk just read (and verified: every read path checks the hash)."""
        self.small_cache.put(chunk_hash, data)
        return data

    @defer.inlineCallbacks
    def rm(self, req: RmRequest, conn: ClientConnection):
        path = self._path(req.path)
        command = RemoveFileCommand(req.client_id, req.seq, time.time_ns(), path)
        version = yield self.node.propose(CODEC.encode(command))
        return RmDone(req.request_id, version)

    # -- chunk traffic from other nodes ----------------------------------------------

    @defer.inlineCallbacks
    def chunk_put(self, req: ChunkPut, conn: ClientConnection):
        try:
            yield self.ops.put(req.hash, req.data)
        except HashMismatchError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return ChunkStored(req.request_id, req.hash)

    @defer.inlineCallbacks
    def chunk_put_after(self, req: ChunkPutAfter, conn: ClientConnection):
        """A chunk from the leader (upload or repair): written after the collects it must follow."""
        try:
            yield self.applied.wait(req.index)
        except defer.TimeoutError:
            raise RequestError(ErrorCode.UNAVAILABLE,
                               f"{self.node.node_id} has not applied up to index {req.index}") from None
        try:
            yield self.ops.put(req.hash, req.data)
        except HashMismatchError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return ChunkStored(req.request_id, req.hash)

    def scrub_status(self, req: ScrubStatusRequest, conn: ClientConnection) -> ScrubStatusReply:
        """This node's scrub and repair counters (``storgctl scrub``); ``start`` begins a pass."""
        scrub = self.scrubber
        if req.start:
            scrub.start_pass()
        counts = scrub.counters
        under = self.repairer.under_replicated if self.node.is_leader() and \
            self.repairer.rounds else scrub.under_replicated
        return ScrubStatusReply(
            req.request_id, self.node.node_id, scrub.running, counts["passes"],
            counts["chunks_checked"], counts["bytes_checked"], counts["bad_copies"],
            counts["missing_copies"], counts["repairs_done"] + self.repairer.counters["copies"],
            under, self.stats["chunks_collected"], self.stats["orphans_removed"])

    @defer.inlineCallbacks
    def chunk_get(self, req: ChunkGet, conn: ClientConnection):
        try:
            if self.ops.busy(req.hash):  # a small file's write may be queued: read after it
                data = yield self.ops.run([req.hash], self.chunks.local.store.get, req.hash)
            else:
                data = yield self.chunks.local.get(req.hash)
        except ChunkNotFoundError:
            raise RequestError(ErrorCode.NOT_FOUND, f"no chunk {req.hash} here") from None
        except CorruptionError as exc:
            log.warn("corrupt chunk {h} requested by a peer: {why}", h=req.hash, why=exc)
            raise RequestError(ErrorCode.INTEGRITY, f"chunk {req.hash} is damaged here") from None
        yield conn.writable()
        reply = ChunkData(req.request_id, req.hash, data)
        if len(data) < BULK_MIN:
            return reply
        if conn.open:
            send_bulk(conn.transport, reply)  # no payload copy
        return None

    # -- garbage ---------------------------------------------------------------

    @defer.inlineCallbacks
    def collect_garbage(self):
        """Leader: propose collecting unreferenced chunks.  Every node: drop orphan chunk files."""
        try:
            if self.node.is_leader():
                candidates = [h for h in self.fsm.unreferenced_chunks() if h not in self._pins]
                if candidates:
                    command = CollectChunksCommand(tuple(candidates[:1000]))
                    d = self.node.propose(CODEC.encode(command))
                    self._raise_barrier()
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
        store = self.chunks.local.store
        cutoff = time.time() - self.orphan_grace
        known = self.fsm.chunk
        pins = set(self._pins)

        def scan() -> list[str]:
            old = []
            for h in store.list():
                try:
                    if store.path(h).stat().st_mtime < cutoff:
                        old.append(h)
                except OSError:
                    continue
            return old

        old = yield self.chunks.local.run(scan)
        me = self.node.node_id

        def unwanted(chunk_hash: str) -> bool:
            # Not in the map (a crashed upload), or a copy the map places elsewhere
            # (repair replaced this node while it was away).
            chunk = known(chunk_hash)
            return chunk is None or me not in chunk.holders

        orphans = [h for h in old if h not in pins and unwanted(h)]
        if orphans:
            removed = yield self.ops.delete_older(orphans, cutoff)
            self.stats["orphans_removed"] += removed
            if removed:
                log.info("removed {n} orphan chunk files", n=removed)

    def _inline_chunk(self, chunk_hash: str, data: bytes, holders: tuple[str, ...]) -> None:
        """A small file applied: write its bytes here (no fsync: the log holds them).

        The write runs in the chunk pool, not on the reactor (creating a
        file took the reactor 0.1 to 0.8 ms per put on every node), batched
        with the other small files applied within a few milliseconds
        (:meth:`ChunkOps.put_batched`).  Until it is done, gets are served from :attr:`small_cache` (filled here: the
        state machine hashed ``data`` to ``chunk_hash``) or read after it
        (:class:`ChunkOps` orders every change and read of one chunk), and
        :meth:`sync_inline_chunks` waits for it.  If a delete of the same
        chunk is still queued (a collect just before), the write queues
        behind it instead of being undone by it.
        """
        self.small_cache.put(chunk_hash, data)
        if self.node.node_id not in holders or self.ops.write_queued(chunk_hash):
            return  # not ours, or the same bytes are about to be written anyway
        d = self.ops.put_batched(chunk_hash, data)
        self._inline_writes.add(d)

        def written(_: Any) -> None:
            self._unsynced.add(chunk_hash)

        def failed(failure: Any) -> None:
            log.failure("writing small file chunk {h} failed", failure, h=chunk_hash)

        def settled(_: Any) -> None:
            self._inline_writes.discard(d)

        d.addCallbacks(written, failed)
        d.addBoth(settled)

    def sync_inline_chunks(self) -> defer.Deferred:
        """Fsync the small files written so far; run before compacting the log.

        Waits for the writes issued before the call (entries already
        applied, which the compaction may drop) to finish first.
        """
        self.ops.flush()
        pending = list(self._inline_writes)
        d = defer.DeferredList(pending) if pending else defer.succeed(None)

        def sync(_: Any) -> defer.Deferred:
            hashes, self._unsynced = list(self._unsynced), set()
            if not hashes:
                return defer.succeed(0)
            synced = self.chunks.local.run(self.chunks.local.store.sync, hashes)
            return synced.addCallback(lambda _: len(hashes))

        return d.addCallback(sync)

    def _chunks_removed(self, hashes: tuple[str, ...]) -> None:
        if not hashes:
            return
        self.stats["chunks_collected"] += len(hashes)
        self.small_cache.discard(hashes)
        self.ops.delete(list(hashes)).addErrback(
            lambda f: log.failure("deleting collected chunks failed", f))

    # -- helpers ---------------------------------------------------------------

    def _path(self, text: str) -> str:
        try:
            return normalize_path(text)
        except InvalidPath as exc:
            raise _bad_path(exc) from None

    def _leader_address(self) -> str:
        return self.address_of(self.node.leader)
