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
its hash before a byte of it is sent, with the next chunk read while the
current one is being sent.

Garbage: chunks no file refers to are collected by the leader through the
log (``CollectChunksCommand``), never while an upload on this leader uses
them; chunk files that never made it into the chunk map (an upload whose
client went away) are deleted by each node after a grace period.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from storg.node import RaftNode
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.raft.types import Role
from storg.server.chunk_io import ChunkUnavailable, Chunks
from storg.server.client_port import ClientConnection, RequestError
from storg.storage.errors import ChunkNotFoundError, CorruptionError, HashMismatchError
from storg.wire import CODEC, ErrorCode
from storg.wire.files import (
    ChunkData, ChunkGet, ChunkPut, ChunkRef, ChunkStored, CollectChunksCommand, GetData, GetEnd,
    GetRequest, GetStart, LsReply, LsRequest, PutData, PutDone, PutEnd, PutFileCommand,
    PutInlineCommand, PutReady,
    PutStart, RemoveFileCommand, RmDone, RmRequest, StatReply, StatRequest,
)

log = Logger(namespace="storg.files")

MAX_DATA_FRAME = 1 << 20
"""Largest PutData/GetData payload a client is asked to send."""

LS_PAGE = 1000

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


def place(chunk_hash: str, nodes: list[str], copies: int) -> list[str]:
    """Rendezvous hashing: each chunk ranks the nodes by hash(chunk, node) and takes the first ones.

    Every node computes the same holders without coordination, copies
    spread evenly over the nodes, and adding a node moves only the chunks
    that now rank it first.
    """
    ranked = sorted(nodes, key=lambda n: hashlib.sha256(f"{chunk_hash}/{n}".encode()).digest())
    return ranked[:copies]


def _bad_path(exc: InvalidPath) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}")


class Upload:
    """One client's put in progress on the leader."""

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

    def data(self, data: bytes) -> None:
        if self.aborted is not None:
            return
        self.hasher.update(data)
        self.size += len(data)
        self.buffer += data
        size = self.service.chunk_size
        while len(self.buffer) >= size:
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            self._replicate(chunk)

    def _replicate(self, chunk: bytes) -> None:
        self.in_flight += len(chunk)
        if not self.reading_paused and self.in_flight > self.service.upload_window:
            self.reading_paused = True
            self.conn.pause_reading()
        d = self.service.replicate(chunk, self.pinned)
        d.addBoth(self._chunk_settled, len(chunk))
        self.chunk_results.append(d)

    def _chunk_settled(self, result: Any, size: int) -> Any:
        self.in_flight -= size
        if self.reading_paused and self.in_flight <= self.service.upload_window:
            self.reading_paused = False
            self.conn.resume_reading()
        return result

    @defer.inlineCallbacks
    def finish(self, end: PutEnd):
        self.inline: bytes | None = None
        if not self.chunk_results and len(self.buffer) <= INLINE_MAX:
            self.inline, self.buffer = bytes(self.buffer), bytearray()
        elif self.buffer:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            self._replicate(chunk)
        results = yield defer.DeferredList(self.chunk_results, consumeErrors=True)
        if self.aborted is not None:
            raise self.aborted
        for ok, value in results:
            if not ok:
                value.raiseException()
        sha = self.hasher.hexdigest()
        if end.size != self.size or end.sha256 != sha:
            raise RequestError(ErrorCode.INTEGRITY,
                               f"the upload arrived as {self.size} bytes with SHA-256 {sha}; "
                               f"the client sent {end.size} bytes with SHA-256 {end.sha256}")
        if self.inline is not None:
            holders = tuple(sorted(self.service.node.core.conf.members()))
            command = PutInlineCommand(self.start.client_id, self.start.seq, time.time_ns(),
                                       self.path, self.inline, holders)
            info = yield self.service.node.propose(CODEC.encode(command))
            return PutDone(self.start.request_id, info)
        command = PutFileCommand(self.start.client_id, self.start.seq, time.time_ns(), self.path,
                                 self.size, sha, tuple(value for _, value in results))
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
                 chunk_size: int, reactor: Any, upload_window_chunks: int = 4,
                 all_copies_grace: float = 2.0, gc_interval: float = 30.0,
                 orphan_grace: float = 3600.0,
                 address_of: Callable[[str], str] = lambda node_id: "") -> None:
        self.node = node
        self.address_of = address_of
        self.fsm = fsm
        self.chunks = chunks
        self.replication_factor = replication_factor
        self.chunk_size = chunk_size
        self.reactor = reactor
        self.upload_window = upload_window_chunks * chunk_size
        self.all_copies_grace = all_copies_grace
        self.gc_interval = gc_interval
        self.orphan_grace = orphan_grace
        self._uploads: dict[tuple[int, int], Upload] = {}
        self._pins: Counter[str] = Counter()
        self._gc: LoopingCall | None = None
        self.stats = Counter()
        fsm.on_chunks_removed = self._chunks_removed
        fsm.on_inline_chunk = self._inline_chunk
        self._unsynced: set[str] = set()
        node.on_role_change(self._role_changed)

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {
            PutStart: self.put_start, PutData: self.put_data, PutEnd: self.put_end,
            GetRequest: self.get, LsRequest: self.ls, StatRequest: self.stat, RmRequest: self.rm,
            ChunkPut: self.chunk_put, ChunkGet: self.chunk_get,
        }

    def start(self) -> None:
        self._gc = LoopingCall(self.collect_garbage)
        self._gc.clock = self.reactor
        self._gc.start(self.gc_interval, now=False).addErrback(
            lambda f: log.failure("garbage collection loop stopped", f))

    def stop(self) -> None:
        if self._gc is not None and self._gc.running:
            self._gc.stop()
        for upload in list(self._uploads.values()):
            upload.abort(RequestError(ErrorCode.UNAVAILABLE, "node stopping"))

    # -- put -------------------------------------------------------------------

    def put_start(self, req: PutStart, conn: ClientConnection) -> PutReady:
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
        return PutReady(req.request_id, MAX_DATA_FRAME)

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
        d = upload.finish(req)
        d.addBoth(self._upload_over, key)
        return d

    def _upload_over(self, result: Any, key: tuple[int, int]) -> Any:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            self._unpin(upload.pinned)
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
    def replicate(self, chunk: bytes, pins: list[str]):
        """Store one chunk on its holders; fires with the ChunkRef to record."""
        chunk_hash = yield self.chunks.local.hash(chunk)
        self._pins[chunk_hash] += 1
        pins.append(chunk_hash)
        voters = sorted(self.node.core.conf.voters)
        copies = min(self.replication_factor, len(voters))
        need = copies // 2 + 1
        known = self.fsm.chunk(chunk_hash)
        if known is not None and len(known.holders) >= need:
            self.stats["chunks_deduplicated"] += 1
            return ChunkRef(chunk_hash, len(chunk), ())
        holders = place(chunk_hash, voters, copies)
        acked = yield self._store_on_holders(chunk_hash, chunk, holders, need)
        self.stats["chunks_stored"] += 1
        return ChunkRef(chunk_hash, len(chunk), tuple(sorted(acked)))

    def _store_on_holders(self, chunk_hash: str, chunk: bytes, holders: list[str],
                          need: int) -> defer.Deferred:
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
            self.chunks.store_on(holder, chunk_hash, chunk).addCallbacks(ok, bad, errbackArgs=(holder,))
        return done

    def _unpin(self, hashes: list[str]) -> None:
        for h in hashes:
            self._pins[h] -= 1
            if self._pins[h] <= 0:
                del self._pins[h]

    # -- reads -----------------------------------------------------------------

    @defer.inlineCallbacks
    def _read_point(self, stale: bool):
        if not stale:
            yield self.node.read_index()

    @defer.inlineCallbacks
    def get(self, req: GetRequest, conn: ClientConnection):
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        conn.send(GetStart(req.request_id, info))
        pending = self._read_chunk(info.chunks[0]) if info.chunks else None
        for i in range(len(info.chunks)):
            data = yield pending
            pending = self._read_chunk(info.chunks[i + 1]) if i + 1 < len(info.chunks) else None
            yield conn.writable()
            if not conn.open:
                if pending is not None:
                    pending.addErrback(lambda _: None)
                return None
            conn.send(GetData(req.request_id, data))
        return GetEnd(req.request_id)

    def _read_chunk(self, ref: ChunkRef) -> defer.Deferred:
        d = self.chunks.read(ref.hash, ref.holders)

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
        files = [_without_chunks(info) for info in self.fsm.list(prefix)]
        for start in range(0, max(len(files) - LS_PAGE, 0), LS_PAGE):
            conn.send(LsReply(req.request_id, tuple(files[start:start + LS_PAGE]), True))
        last = (max(len(files) - 1, 0) // LS_PAGE) * LS_PAGE
        return LsReply(req.request_id, tuple(files[last:]), False)

    @defer.inlineCallbacks
    def stat(self, req: StatRequest, conn: ClientConnection):
        path = self._path(req.path)
        yield self._read_point(req.stale)
        info = self.fsm.get(path)
        if info is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no such file: {path}")
        return StatReply(req.request_id, info)

    # -- rm --------------------------------------------------------------------

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
            yield self.chunks.local.put(req.data, req.hash)
        except HashMismatchError as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return ChunkStored(req.request_id, req.hash)

    @defer.inlineCallbacks
    def chunk_get(self, req: ChunkGet, conn: ClientConnection):
        try:
            data = yield self.chunks.local.get(req.hash)
        except ChunkNotFoundError:
            raise RequestError(ErrorCode.NOT_FOUND, f"no chunk {req.hash} here") from None
        except CorruptionError as exc:
            log.warn("corrupt chunk {h} requested by a peer: {why}", h=req.hash, why=exc)
            raise RequestError(ErrorCode.INTEGRITY, f"chunk {req.hash} is damaged here") from None
        yield conn.writable()
        return ChunkData(req.request_id, req.hash, data)

    # -- garbage ---------------------------------------------------------------

    @defer.inlineCallbacks
    def collect_garbage(self):
        """Leader: propose collecting unreferenced chunks.  Every node: drop orphan chunk files."""
        try:
            if self.node.is_leader():
                candidates = [h for h in self.fsm.unreferenced_chunks() if h not in self._pins]
                if candidates:
                    command = CollectChunksCommand(tuple(candidates[:1000]))
                    yield self.node.propose(CODEC.encode(command))
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

        old = yield self.chunks.local._run(scan)
        orphans = [h for h in old if known(h) is None and h not in pins]
        if orphans:
            removed = yield self.chunks.local.delete_many(orphans)
            self.stats["orphans_removed"] += removed
            log.info("removed {n} orphan chunk files", n=removed)

    def _inline_chunk(self, chunk_hash: str, data: bytes, holders: tuple[str, ...]) -> None:
        """A small file applied: write its bytes here now (no fsync: the log holds them)."""
        if self.node.node_id not in holders:
            return
        self.chunks.local.store.put(data, chunk_hash, durable=False)
        self._unsynced.add(chunk_hash)

    def sync_inline_chunks(self) -> defer.Deferred:
        """Fsync the small files written since the last call; run before compacting the log."""
        hashes, self._unsynced = list(self._unsynced), set()
        if not hashes:
            return defer.succeed(0)
        d = self.chunks.local._run(self.chunks.local.store.sync, hashes)
        return d.addCallback(lambda _: len(hashes))

    def _chunks_removed(self, hashes: tuple[str, ...]) -> None:
        if not hashes:
            return
        self.stats["chunks_collected"] += len(hashes)
        self.chunks.local.delete_many(hashes).addErrback(
            lambda f: log.failure("deleting collected chunks failed", f))

    # -- helpers ---------------------------------------------------------------

    def _path(self, text: str) -> str:
        try:
            return normalize_path(text)
        except InvalidPath as exc:
            raise _bad_path(exc) from None

    def _leader_address(self) -> str:
        return self.address_of(self.node.leader)


def _without_chunks(info: Any) -> Any:
    return type(info)(info.path, info.size, info.sha256, info.modified_ns, info.version, ())
