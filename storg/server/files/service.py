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

The parts each have a module in this package: placement, pins (and the
collect barrier), replication, uploads, the chunk job order (chunk_ops),
the small-file cache, garbage, the applied waiter, chunk I/O.  This module
holds the request handlers and the small files written at apply.  Repair,
scrub and fill (storg.server.upkeep) are built beside this service by the
node's assembly (storg.server.service) from the same parts.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.config import FileTuning, LimitTuning
from storg.fsm.records import pack_attrs
from storg.net.framing import describe_address, send_bulk
from storg.net.ratelimit import RateLimitedLog
from storg.node.executor import Submit
from storg.node.raft_node import RaftNode
from storg.paths import MAX_PATH_BYTES, InvalidPath, normalize_path, normalize_prefix
from storg.raft.types import Role
from storg.server.client_port import ClientConnection, RequestError
from storg.server.files.applied import AppliedWaiter
from storg.server.files.batch import BatchService
from storg.server.files.cache import SmallChunkCache
from storg.server.files.chunk_io import Chunks, ChunkUnavailable
from storg.server.files.chunk_ops import ChunkOps
from storg.server.files.garbage import GarbageCollector
from storg.server.files.objects import ObjectService
from storg.server.files.pins import CollectGuard
from storg.server.files.placement import Liveness
from storg.server.files.replication import ChunkReplicator
from storg.server.files.reserve import DiskReserve
from storg.server.files.tree import TreeService
from storg.server.files.upload import INLINE_MAX, MAX_DATA_FRAME, PLAIN_WRITE, ObjectWrite, Upload
from storg.server.files.upload_budget import UploadBudget
from storg.server.files.watch import WatchHub
from storg.storage.errors import (
    ChunkNotFoundError,
    CorruptionError,
    DiskFullError,
    HashMismatchError,
    StorageError,
)
from storg.wire import CODEC, ErrorCode
from storg.wire.bulk import BULK_MIN
from storg.wire.chunks import (
    ChunkData,
    ChunkGet,
    ChunkPinQuery,
    ChunkPinReply,
    ChunkPlacedQuery,
    ChunkPlacedReply,
    ChunkPutAfter,
    ChunkStored,
    RemoveFileCommand,
)
from storg.wire.files import (
    WHOLE,
    ChunkRef,
    FileInfo,
    GetData,
    GetEnd,
    GetRequest,
    GetStart,
    LsReply,
    LsRequest,
    PutData,
    PutEnd,
    PutReady,
    PutStart,
    RmDone,
    RmRequest,
    StatReply,
    StatRequest,
)
from storg.wire.objects import ObjectAttrs, PutAbort, PutEndObject, PutStartObject
from storg.wire.records import CodecError
from storg.wire.tree import PutStartIf

log = Logger(namespace="storg.files")

LS_PAGE = 1000

LS_FRAME_BYTES = 4 * 1024 * 1024
"""Bytes of FileInfos per LsReply frame at most: a thousand files with 4 KiB paths and
large attributes would not fit in one frame (MAX_FRAME_BYTES), so a page is cut."""


def within_frame(files: list[FileInfo]) -> list[tuple[FileInfo, ...]]:
    """``files`` in runs whose frames stay under LS_FRAME_BYTES (at least one run, maybe empty).

    The size is estimated from the path and attributes (a FileInfo without
    chunks is about 70 bytes more), cheaply: most files have short ones.
    """
    runs: list[tuple[FileInfo, ...]] = []
    run: list[FileInfo] = []
    size = 0
    for info in files:
        attrs = info.attrs
        # 4 bytes per character: UTF-8's most, so that no run's frame can come out larger.
        cost = 100 + 4 * (len(info.path) + len(attrs.etag) + len(attrs.content_type))
        if attrs.metadata or attrs.checksums or attrs.extra or attrs.parts:
            cost += 4 * sum(len(k) + len(v) + 2 for k, v in attrs.metadata + attrs.checksums + attrs.extra)
            cost += 8 * len(attrs.parts)
        if run and size + cost > LS_FRAME_BYTES:
            runs.append(tuple(run))
            run, size = [], 0
        run.append(info)
        size += cost
    runs.append(tuple(run))
    return runs


UPLOAD_BUDGET_WINDOWS = 2
"""All uploads on a node together have at most this many upload windows of chunks in flight
(storg.server.files.upload_budget): one upload keeps its whole window, a second shares."""

PLACED_QUERY_TIMEOUT = 5.0
"""Seconds a holder waits for the leader's answer to a ChunkPlacedQuery before refusing the put."""

GET_READ_AHEAD = 3
"""Chunks a get reads (and verifies) ahead of the one being sent: a few MiB per get."""


def _peer_of(conn: Any) -> str:
    try:
        return describe_address(conn.transport.getPeer())
    except Exception:  # a fake or closed transport
        return "?"


def _condition(req: PutStart | PutStartIf | PutStartObject) -> ObjectWrite:
    """The conditions and attributes of a put, checked for form here."""
    if isinstance(req, PutStart):
        return PLAIN_WRITE
    match = req.if_match.lower()
    if match:
        try:
            ok = len(bytes.fromhex(match)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise RequestError(ErrorCode.BAD_REQUEST, f"--if-match {req.if_match!r} is not a SHA-256 (64 hex digits)")
    etag = req.if_match_etag if isinstance(req, PutStartObject) else ""
    if req.if_absent and (match or etag):
        raise RequestError(ErrorCode.BAD_REQUEST, "--if-absent and --if-match cannot both hold")
    if not isinstance(req, PutStartObject):
        return ObjectWrite(req.if_absent, match)
    return ObjectWrite(req.if_absent, match, etag, _checked_attrs(req.attrs))


def _checked_attrs(attrs: ObjectAttrs) -> ObjectAttrs:
    """A put's attributes (at its start or its end), checked for form as the state machine will."""
    if attrs.parts:
        raise RequestError(ErrorCode.BAD_REQUEST, "only a composed file has parts")
    try:
        pack_attrs(attrs)
    except CodecError as exc:
        raise RequestError(ErrorCode.LIMIT_EXCEEDED, str(exc)) from None
    return attrs


INLINE_RETRIES = 5
"""Syncs before compaction that may fail to write a small file before the node stops."""


class InlineWriteFailed(StorageError):
    """Small files applied here could not be written; the log must keep them."""


def _overlapping(chunks: tuple[ChunkRef, ...], start: int, stop: int):
    """(chunk, from, to) for each chunk overlapping bytes [start, stop) of the file, cut to them."""
    pos = 0
    for ref in chunks:
        end = pos + ref.size
        if end > start and pos < stop:
            yield ref, max(start - pos, 0), min(stop, end) - pos
        if end >= stop:
            return
        pos = end


def _bad_path(exc: InvalidPath) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}")


class FileService:
    """Handlers for the file store's requests, over the parts of the data path it builds.

    The parts are public (``ops``, ``guard``, ``applied``, ``replicator``,
    ``garbage``, ``small_cache``, ``chunks``): the node's assembly hands
    them, and only them, to repair, scrub and fill.
    """

    def __init__(self, node: RaftNode, fsm: Any, chunks: Chunks, *, replication_factor: int,
                 chunk_size: int, reactor: Any, hasher: Submit, upload_window_chunks: int = 8,
                 all_copies_grace: float = 2.0, gc_interval: float | None = None,
                 orphan_grace: float | None = None, tuning: FileTuning | None = None,
                 liveness: Liveness | None = None,
                 address_of: Callable[[str], str] = lambda node_id: "",
                 reserve: DiskReserve | None = None, limits: LimitTuning | None = None) -> None:
        tuning = tuning or FileTuning(replication_factor, chunk_size)
        self.tuning = tuning
        self.limits = limits if limits is not None else LimitTuning()
        self.node = node
        self.address_of = address_of
        self.fsm = fsm
        self.chunks = chunks
        self.reactor = reactor
        self.hasher = hasher
        """Runs the uploads' whole-file SHA-256 off the reactor, apart from the chunk
        pool, whose threads may all be waiting on fsyncs."""
        self.chunk_size = chunk_size
        self.upload_window = upload_window_chunks * chunk_size
        self.upload_budget = UploadBudget(UPLOAD_BUDGET_WINDOWS * self.upload_window)
        self.liveness = liveness if liveness is not None else Liveness(reactor)
        self.reserve = reserve if reserve is not None else DiskReserve(
            node.node_id, ".", 0, reactor=reactor, run_in_thread=hasher)  # none: never refuses
        self.ops = ChunkOps(chunks.local, reactor)
        self.guard = CollectGuard(node)
        self.applied = AppliedWaiter(node, reactor)
        self.small_cache = SmallChunkCache()
        self.replicator = ChunkReplicator(
            node, fsm, ops=self.ops, remote=chunks.remote, applied=self.applied, guard=self.guard,
            reactor=reactor, replication_factor=replication_factor, unreachable=self.unreachable,
            all_copies_grace=all_copies_grace, reserve=self.reserve)
        self.garbage = GarbageCollector(
            node, fsm, local=chunks.local, ops=self.ops, guard=self.guard, cache=self.small_cache,
            remote=chunks.remote,
            reactor=reactor,
            interval=gc_interval if gc_interval is not None else tuning.gc_interval_s,
            orphan_grace=orphan_grace if orphan_grace is not None else tuning.orphan_grace_s)
        self._uploads: dict[tuple[int, int], Upload] = {}
        self._uploads_per_conn: Counter[int] = Counter()
        self._refusals = RateLimitedLog(log, reactor)
        self.tree = TreeService(node)
        self.objects = ObjectService(node, fsm)
        self.watches = WatchHub(node, fsm, reactor=reactor)
        self.batches = BatchService(node, fsm, self.replicator, self.reserve, read_point=self._read_point,
                                    read_chunk=self._read_chunk, in_thread=hasher,
                                    leader_address=self._leader_address)
        fsm.on_inline_chunk = self._inline_chunk
        self._unsynced: set[str] = set()
        self._inline_writes: set[defer.Deferred] = set()
        self._failed_inline: dict[str, bytes] = {}
        """Small files whose write at apply failed (ENOSPC, EIO): retried before any compaction."""
        self._inline_sync_failures = 0
        self.on_holder_failure: Callable[[Failure], object] | None = None
        """Called (the node stops, loudly) when small files still cannot be written after
        :data:`INLINE_RETRIES` syncs: better no holder than one that forgot."""
        node.on_role_change(self._role_changed)

    def unreachable(self) -> frozenset[str]:
        """Members the leader's last probe could not reach (placement puts them last)."""
        return self.liveness.failing() if self.node.is_leader() else frozenset()

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return self.tree.handlers() | self.objects.handlers() | self.watches.handlers() | self.batches.handlers() | {
            PutStart: self.put_start, PutStartIf: self.put_start, PutStartObject: self.put_start,
            PutData: self.put_data, PutEnd: self.put_end, PutEndObject: self.put_end, PutAbort: self.put_abort,
            GetRequest: self.get, LsRequest: self.ls, StatRequest: self.stat, RmRequest: self.rm,
            ChunkGet: self.chunk_get, ChunkPutAfter: self.chunk_put_after,
            ChunkPlacedQuery: self.chunk_placed,
            ChunkPinQuery: self.chunk_pins,
        }

    def start(self) -> None:
        self.garbage.start()
        self.reserve.start()
        self.watches.start()

    def stop(self) -> None:
        self.watches.stop()
        self.garbage.stop()
        self.reserve.stop()
        self.applied.stop()
        for upload in list(self._uploads.values()):
            upload.abort(RequestError(ErrorCode.UNAVAILABLE, "node stopping"))

    # -- put -------------------------------------------------------------------

    def put_start(self, req: PutStart | PutStartIf | PutStartObject, conn: ClientConnection) -> None:
        """An upload begins (PutStartIf: one whose entry is applied only if its condition holds)."""
        try:
            path = normalize_path(req.path)
        except InvalidPath as exc:
            raise _bad_path(exc) from None
        condition = _condition(req)
        if not self.node.is_leader():
            raise RequestError(ErrorCode.NOT_LEADER, "not the leader", self._leader_address())
        # The leader's log takes the entry, and its disk (usually) a copy of each chunk.
        self.reserve.check(f"put {path}")
        key = (id(conn), req.request_id)
        if key in self._uploads:
            raise RequestError(ErrorCode.BAD_REQUEST, f"request {req.request_id} is already an upload")
        limit = self.limits.max_uploads_per_connection
        if self._uploads_per_conn[id(conn)] >= limit:
            # Refused, not paused: an open upload needs more frames of this very
            # connection to finish, so not reading them could never end.
            raise RequestError(ErrorCode.LIMIT_EXCEEDED,
                               f"{limit} uploads are already open on this connection "
                               "(limits.max_uploads_per_connection)")
        upload = Upload(self.replicator, conn, req, path, chunk_size=self.chunk_size,
                        window=self.upload_window, hasher=self.hasher, write=condition,
                        budget=self.upload_budget)
        self._uploads[key] = upload
        self._uploads_per_conn[id(conn)] += 1
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

    def put_end(self, req: PutEnd | PutEndObject, conn: ClientConnection) -> defer.Deferred:
        """The upload's last frame: commit it (PutEndObject: with the attributes it gives)."""
        key = (id(conn), req.request_id)
        upload = self._uploads.get(key)
        if upload is None:
            raise RequestError(ErrorCode.BAD_REQUEST, f"no upload {req.request_id} on this connection")
        if upload.ready is not None:
            upload.ready.cancel()
        if isinstance(req, PutEndObject):
            try:
                upload.write = upload.write._replace(attrs=_checked_attrs(req.attrs))
            except RequestError:
                upload.abort(RequestError(ErrorCode.BAD_REQUEST, "the upload's final attributes were refused"))
                self._drop_aborted(key)
                raise
        d = upload.finish(req)
        d.addBoth(self._upload_over, key)
        return d

    def put_abort(self, req: PutAbort, conn: ClientConnection) -> None:
        """The client gave the upload up (the gateway refused its body): nothing is committed.

        Its chunks stay unreferenced and garbage collection takes them; the
        connection goes on serving the client's other requests.
        """
        key = (id(conn), req.request_id)
        if key in self._uploads:
            self._uploads[key].abort(RequestError(ErrorCode.BAD_REQUEST, "the client aborted the upload"))
            self._drop_aborted(key)

    def _drop_aborted(self, key: tuple[int, int]) -> None:
        """Forget an aborted upload once its chunk writes settled (its pins last until then)."""
        upload = self._uploads.get(key)
        if upload is None:
            return
        if not upload.chunk_results:
            self._upload_over(None, key)
        else:
            d = defer.DeferredList(upload.chunk_results, consumeErrors=True)
            d.addBoth(self._upload_over, key)

    def _upload_over(self, result: Any, key: tuple[int, int]) -> Any:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            self._uploads_per_conn[key[0]] -= 1
            if self._uploads_per_conn[key[0]] <= 0:
                del self._uploads_per_conn[key[0]]
            self.guard.unpin(upload.pinned)
            # Applied (then the chunk map counts these bytes) or failed: no longer pending.
            self.replicator.unplace(upload.placed)
        return result

    def _connection_gone(self, key: tuple[int, int]) -> None:
        upload = self._uploads.get(key)
        if upload is not None and upload.aborted is None:
            upload.abort(RequestError(ErrorCode.UNAVAILABLE, "client went away"))
            # Its chunks stay unreferenced; garbage collection takes them.
            self._drop_aborted(key)

    def _role_changed(self, soft: Any) -> None:
        if soft.role != Role.LEADER and self._uploads:
            for upload in list(self._uploads.values()):
                upload.abort(RequestError(ErrorCode.NOT_LEADER, "leadership changed during the upload",
                                          self._leader_address()))

    # -- reads -----------------------------------------------------------------

    def _read_point(self, stale: bool) -> defer.Deferred:
        """Fires once a linearizable read may be served here (at once for a stale read)."""
        return defer.succeed(None) if stale else self.node.read_index()

    @defer.inlineCallbacks
    def get(self, req: GetRequest, conn: ClientConnection):
        """Stream ``length`` bytes of the file from ``offset``: only the chunks that overlap, trimmed.

        GetStart carries the whole FileInfo (all chunks, so a client can
        check what it gets) and the index the read was served at.  Each
        chunk is verified against its hash before a byte of it is sent.
        """
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        if req.offset > info.size:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"offset {req.offset} is past the end of {path} ({info.size} bytes)")
        stop = info.size if req.length == WHOLE else min(info.size, req.offset + req.length)
        # Small frames whose data is at hand are held and written together
        # (send_all): a small file's whole answer goes out as one write.
        held: list[Any] = [GetStart(req.request_id, info, self.node.applied_index)]
        held_bytes = 0
        # Reads (each one a file read and a SHA-256 in the pool) run ahead of
        # the socket by up to GET_READ_AHEAD chunks, so neither waits for the other.
        chunks = iter(_overlapping(info.chunks, req.offset, stop))
        pending: deque[tuple[defer.Deferred, int, int, int]] = deque()

        def read_ahead() -> None:
            while len(pending) < GET_READ_AHEAD:
                item = next(chunks, None)
                if item is None:
                    return
                ref, cut_from, cut_to = item
                pending.append((self._read_chunk(ref), cut_from, cut_to, ref.size))

        try:
            read_ahead()
            while pending:
                d, cut_from, cut_to, size = pending.popleft()
                if held and not d.called:  # a wait for the disk: what is ready goes first
                    conn.send_all(held)
                    held, held_bytes = [], 0
                data = yield d
                read_ahead()
                if cut_from or cut_to != size:
                    data = data[cut_from:cut_to]
                if held_bytes + len(data) < BULK_MIN and not conn.backed_up:
                    held.append(GetData(req.request_id, data))
                    held_bytes += len(data)
                    continue
                if held:
                    conn.send_all(held)
                    held, held_bytes = [], 0
                yield conn.writable()
                if not conn.open:
                    return None
                if len(data) >= BULK_MIN:
                    send_bulk(conn.transport, GetData(req.request_id, data))  # no payload copy
                else:
                    conn.send(GetData(req.request_id, data))
        finally:
            for d, *_ in pending:
                d.addErrback(lambda _: None)
        held.append(GetEnd(req.request_id))
        conn.send_all(held)
        return None

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
        if req.limit:
            return (yield self._ls_page(req))
        try:
            prefix = normalize_prefix(req.prefix)
        except InvalidPath as exc:
            raise _bad_path(exc) from None
        yield self._read_point(req.stale)
        index = self.node.applied_index
        # Frozen at the read point; FileInfos built and sent a page at a time,
        # with the reactor free between pages and the socket's buffer bounded:
        # a million files is seconds of work and a hundred MB of replies.
        listing = self.fsm.listing(prefix)
        last = (max(len(listing) - 1, 0) // LS_PAGE) * LS_PAGE
        for start in range(0, last, LS_PAGE):
            for files in within_frame(listing.page(start, start + LS_PAGE)):
                conn.send(LsReply(req.request_id, files, True, index))
            yield conn.writable()
            yield deferLater(self.reactor, 0, lambda: None)
            if not conn.open:
                return None
        pieces = within_frame(listing.page(last, len(listing)))
        for files in pieces[:-1]:
            conn.send(LsReply(req.request_id, files, True, index))
        return LsReply(req.request_id, pieces[-1], False, index)

    @defer.inlineCallbacks
    def _ls_page(self, req: LsRequest):
        """One page of files whose path starts with the string ``prefix``, after ``start_after``."""
        prefix = req.prefix
        if not prefix.startswith("/") or "\x00" in prefix or len(prefix.encode("utf-8", "replace")) > \
                MAX_PATH_BYTES + 1:
            raise RequestError(ErrorCode.BAD_REQUEST, f"a listing prefix starts with '/' and is a path's "
                               f"beginning, not {prefix[:80]!r}")
        if req.limit > LS_PAGE:
            raise RequestError(ErrorCode.LIMIT_EXCEEDED, f"a page has at most {LS_PAGE} files, not {req.limit}")
        yield self._read_point(req.stale)
        index = self.node.applied_index
        files, more = self.fsm.page(prefix, req.start_after, req.limit)
        pieces = within_frame(files)
        if len(pieces) > 1:  # attributes too large for one frame: a shorter page
            return LsReply(req.request_id, pieces[0], True, index)
        return LsReply(req.request_id, pieces[0], more, index)

    @defer.inlineCallbacks
    def stat(self, req: StatRequest, conn: ClientConnection):
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        return StatReply(req.request_id, info, self.node.applied_index)

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
    def chunk_put_after(self, req: ChunkPutAfter, conn: ClientConnection):
        """A chunk from the leader (upload or repair): written after the collects it must follow.

        Anyone can reach the client port, so before a byte is written the
        chunk must be one the leader placed here (docs/architecture.rst,
        section "Limits"): no bigger than a chunk, and either known to the
        chunk map (a repair copy, a copy of a deduplicated chunk) or placed on
        this node by an upload in flight on the leader, which this node asks
        over its own connection to the leader (``ChunkPlacedQuery``).
        """
        known = self.fsm.chunk(req.hash)
        limit = known.size if known is not None else self.chunk_size
        if len(req.data) > max(limit, self.chunk_size):
            raise RequestError(ErrorCode.LIMIT_EXCEEDED,
                               f"a chunk of {len(req.data)} bytes is over the chunk size of "
                               f"{self.chunk_size} bytes (files.chunk_size)")
        # A full disk refuses at once, whoever asks (the cheapest check first).
        self.reserve.check(f"chunk {req.hash[:12]}")
        # Asked at once, answered while the collect barrier is awaited: no added round trip.
        # A node that has not heard from a leader yet (just started, say) asks after the
        # wait instead: applying up to req.index means a leader has reached it.
        leader_known = self.node.is_leader() or bool(self.node.leader)
        asked = None if known is not None or not leader_known else self._placed_by_leader(req.hash)
        try:
            yield self.applied.wait(req.index)
        except defer.TimeoutError:
            if asked is not None:
                asked.addErrback(lambda _: None)
            raise RequestError(ErrorCode.UNAVAILABLE,
                               f"{self.node.node_id} has not applied up to index {req.index}") from None
        if self.fsm.chunk(req.hash) is None:
            placed = yield asked if asked is not None else self._placed_by_leader(req.hash)
            if not placed:
                self._refusals.emit("unplaced chunk puts",
                                    "refused a put of chunk {h} from {peer}: the leader placed no such "
                                    "chunk on {node}", h=req.hash[:12], node=self.node.node_id,
                                    peer=_peer_of(conn))
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"chunk {req.hash[:12]} was not placed on {self.node.node_id} "
                                   "by the leader")
        elif asked is not None:
            asked.addErrback(lambda _: None)
        self.reserve.charge(len(req.data))
        try:
            yield self.ops.put(req.hash, req.data)
        except HashMismatchError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
        except DiskFullError as exc:  # the disk filled before the reserve saw it (another writer)
            raise RequestError(ErrorCode.DISK_FULL, f"{self.node.node_id}: {exc}") from None
        return ChunkStored(req.request_id, req.hash)

    def _placed_by_leader(self, chunk_hash: str) -> defer.Deferred:
        """Fires with True if the leader placed ``chunk_hash`` on this node (False if it
        did not, or if no leader could be asked: refusing is the safe answer)."""
        me = self.node.node_id
        if self.node.is_leader():
            return defer.succeed(self.replicator.is_placed(chunk_hash, me))
        leader = self.node.leader
        if not leader or leader == me:
            return defer.succeed(False)

        @defer.inlineCallbacks
        def ask():
            conn = yield self.chunks.remote.connection(leader)
            d = conn.request(lambda rid: ChunkPlacedQuery(rid, chunk_hash, me))
            d.addTimeout(PLACED_QUERY_TIMEOUT, self.reactor)
            reply = yield d
            return isinstance(reply, ChunkPlacedReply) and reply.placed

        def unknown(failure: Any) -> bool:
            log.info("cannot ask leader {leader} about chunk {h}: {why}", leader=leader,
                     h=chunk_hash[:12], why=failure.getErrorMessage())
            return False

        return ask().addErrback(unknown)

    def chunk_placed(self, req: ChunkPlacedQuery, conn: ClientConnection) -> ChunkPlacedReply:
        """The leader's answer to a holder checking a ChunkPutAfter (see chunk_put_after)."""
        placed = self.node.is_leader() and self.replicator.is_placed(req.hash, req.holder)
        return ChunkPlacedReply(req.request_id, placed)

    def chunk_pins(self, req: ChunkPinQuery, conn: ClientConnection) -> ChunkPinReply:
        """The leader: which of these chunks a live upload or repair of ours has pinned (their lease)."""
        if not self.node.is_leader():
            raise RequestError(ErrorCode.NOT_LEADER, "not the leader", self._leader_address())
        pinned = self.guard.pinned
        return ChunkPinReply(req.request_id, tuple(h for h in req.hashes if pinned(h)))

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

    # -- small files written at apply -------------------------------------------------

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
            self._failed_inline.pop(chunk_hash, None)

        def failed(failure: Any) -> None:
            log.failure("writing small file chunk {h} failed; it is retried, and the log is not "
                        "compacted past it until it is written", failure, h=chunk_hash)
            self._failed_inline[chunk_hash] = data

        def settled(_: Any) -> None:
            self._inline_writes.discard(d)

        d.addCallbacks(written, failed)
        d.addBoth(settled)

    def sync_inline_chunks(self) -> defer.Deferred:
        """Fsync the small files written so far; run before compacting the log.

        Waits for the writes issued before the call (entries already
        applied, which the compaction may drop) to finish first.  A small
        file whose write failed is written again here (durably); if that
        fails too, this fails with :class:`InlineWriteFailed` and the
        compaction does not happen: the log stays the only copy of those
        bytes on this node, and it is never dropped before they are on disk.
        After :data:`INLINE_RETRIES` such failures in a row the node stops
        (``on_holder_failure``) rather than serve as a holder that lost them.
        """
        self.ops.flush()
        pending = list(self._inline_writes)
        d = defer.DeferredList(pending) if pending else defer.succeed(None)
        d.addCallback(lambda _: self._retry_failed_inline())

        def sync(_: Any) -> defer.Deferred:
            hashes, self._unsynced = list(self._unsynced), set()
            if not hashes:
                return defer.succeed(0)
            synced = self.chunks.local.run(self.chunks.local.store.sync, hashes)
            return synced.addCallback(lambda _: len(hashes))

        return d.addCallback(sync)

    @defer.inlineCallbacks
    def _retry_failed_inline(self):
        """Write the failed small files again, durably; InlineWriteFailed if any still fails."""
        if not self._failed_inline:
            self._inline_sync_failures = 0
            return
        failures: list[str] = []
        for chunk_hash, data in list(self._failed_inline.items()):
            chunk = self.fsm.chunk(chunk_hash)
            if chunk is None or self.node.node_id not in chunk.holders:
                self._failed_inline.pop(chunk_hash, None)  # collected or moved meanwhile
                continue
            try:
                yield self.ops.put(chunk_hash, data, durable=True)
            except Exception as exc:
                failures.append(f"{chunk_hash[:12]}: {exc}")
            else:
                self._failed_inline.pop(chunk_hash, None)
        if not failures:
            self._inline_sync_failures = 0
            log.info("small files whose write had failed are now on disk")
            return
        self._inline_sync_failures += 1
        error = InlineWriteFailed(f"{len(failures)} small files cannot be written on {self.node.node_id} "
                                  f"({failures[0]}); the log is not compacted past them")
        if self._inline_sync_failures >= INLINE_RETRIES and self.on_holder_failure is not None:
            log.critical("{why}; giving up after {n} tries: stopping this node rather than forget them",
                         why=error, n=self._inline_sync_failures)
            self.on_holder_failure(Failure(error))
        raise error

    # -- helpers ---------------------------------------------------------------

    def _path(self, text: str) -> str:
        try:
            return normalize_path(text)
        except InvalidPath as exc:
            raise _bad_path(exc) from None

    def _leader_address(self) -> str:
        return self.address_of(self.node.leader)
