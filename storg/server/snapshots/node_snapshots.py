"""Snapshots on a running node: taken automatically, restored, and streamed to lagging followers.

Four pieces, tied to the node by :class:`NodeSnapshots`:

* :class:`AutoSnapshots` -- every ``snapshot_every`` applied entries the
  state machine is frozen on the reactor (shallow copies only), its frames
  are written to the snapshot store in a thread, and only once the file is
  durable is the log compacted (the core's, then the WAL's segments).
* :func:`load_snapshot` / :meth:`NodeSnapshots.restore` -- read a snapshot
  back (decoding in a thread) and install it in the state machine: at
  start-up, and when the core adopts a snapshot sent by the leader.
* :class:`SnapshotSender` -- the leader's side of InstallSnapshot.  The
  core's SNAPSHOT message carries only the meta; the data goes first, in
  bounded frames over the follower's client port (``storg.wire.snapshots``),
  paced by TCP flow control, then the message goes over the peer transport.
* :class:`SnapshotReceiver` -- the follower's side: it accepts data only
  from the leader its core follows, writes it to a temporary snapshot file,
  keeps that partial file across a dropped connection (the leader resumes
  at the offset it is told), and commits it once the SHA-256 matches.

Snapshot data is the state machine's frames, each prefixed by its length
as a big-endian u32.

Only one snapshot is written at a time (:class:`_WriteGate`): an automatic
snapshot never replaces, nor races, one received from the leader.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.net.connection import ProtocolViolation, connect
from storg.fsm.machine import FileStoreStateMachine, LoadedSnapshot, SnapshotFormatError, read_snapshot
from storg.node.raft_node import NodeStopped, RaftNode
from storg.raft.types import ConfState, Message, Role, SnapshotMeta
from storg.server.client_port import RequestError
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.logstore import DiskLogStore
from storg.storage.snapshot import SnapshotReader, SnapshotWriter
from storg.wire import MAX_FRAME_BYTES, ErrorCode
from storg.wire.snapshots import (
    SnapshotBegin, SnapshotEnd, SnapshotOffset, SnapshotPart, SnapshotStored,
)

log = Logger(namespace="storg.snapshots")

PART_BYTES = 256 * 1024
"""Data per SnapshotPart frame: small next to the frame limit, large enough to stream fast."""

MAX_PART_BYTES = 1 << 20
"""The largest part a follower accepts."""

MAX_SNAPSHOT_BYTES = 1 << 40
"""The largest snapshot a follower accepts; a bigger size is a broken or hostile sender."""

_WRITE_BATCH = 1 << 20
_READ_CHUNK = 1 << 20
_LENGTH = struct.Struct(">I")

Executor = Callable[..., defer.Deferred]


class SnapshotUnavailable(Exception):
    """There is no snapshot to send, or the follower cannot be reached."""


class _Cancelled(Exception):
    """The node is stopping: an automatic snapshot being written is abandoned."""


# --- the data format ------------------------------------------------------------------

def write_frames(writer: SnapshotWriter, frames: Iterable[bytes],
                 cancelled: Callable[[], bool] = lambda: False) -> int:
    """Write ``frames`` u32-length-prefixed, in about 1 MiB writes; returns the bytes written."""
    batch: list[bytes] = []
    pending = 0
    total = 0
    pack = _LENGTH.pack
    for frame in frames:
        batch.append(pack(len(frame)))
        batch.append(frame)
        pending += 4 + len(frame)
        if pending >= _WRITE_BATCH:
            if cancelled():
                raise _Cancelled()
            writer.write(b"".join(batch))
            total += pending
            batch.clear()
            pending = 0
    if batch:
        writer.write(b"".join(batch))
        total += pending
    return total


def read_frames(reader: SnapshotReader) -> Iterator[bytes]:
    """The frames of a snapshot's data; the reader checks the SHA-256 when it reaches the end."""
    buf = bytearray()
    pos = 0
    while True:
        data = reader.read(_READ_CHUNK)
        if not data:
            break
        if pos:
            del buf[:pos]
            pos = 0
        buf += data
        while len(buf) - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > MAX_FRAME_BYTES:
                raise SnapshotFormatError(f"snapshot frame of {length} bytes is over the limit")
            end = pos + _LENGTH.size + length
            if end > len(buf):
                break
            yield bytes(buf[pos + _LENGTH.size:end])
            pos = end
    if pos != len(buf):
        raise SnapshotFormatError("snapshot data ends inside a frame")


def _read_snapshot_file(log_store: DiskLogStore, expected: SnapshotMeta | None) -> LoadedSnapshot | None:
    """Blocking: decode the current snapshot (None for none, or for index 0's membership only)."""
    reader = log_store.open_snapshot()
    if reader is None:
        if expected is not None:
            raise StorageError(f"the snapshot at index {expected.index} is not in the snapshot store")
        return None
    with reader:
        meta = reader.meta
        if expected is not None and (meta.index, meta.term) != (expected.index, expected.term):
            raise StorageError(f"expected the snapshot at index {expected.index} term {expected.term}, "
                               f"the store holds index {meta.index} term {meta.term}")
        if meta.index == 0:
            return None
        return read_snapshot(read_frames(reader))


def load_snapshot(log_store: DiskLogStore) -> LoadedSnapshot | None:
    """Blocking: the current snapshot decoded and checked, ready for ``fsm.install``.

    For start-up, before the reactor runs.  Raises CorruptionError,
    SnapshotFormatError or CodecError on damaged data.
    """
    return _read_snapshot_file(log_store, None)


def _threaded_executor(reactor: Any, name: str, threads: int) -> tuple[Executor, Any]:
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool
    pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
    pool.start()
    return (lambda fn, *args: deferToThreadPool(reactor, pool, fn, *args)), pool


class _WriteGate:
    """At most one snapshot being written or committed by this node (reactor thread only)."""

    def __init__(self) -> None:
        self.holder = ""

    def acquire(self, who: str) -> bool:
        if self.holder:
            return False
        self.holder = who
        return True

    def release(self, who: str) -> None:
        if self.holder == who:
            self.holder = ""


# --- automatic snapshots ---------------------------------------------------------------

class AutoSnapshots:
    """Takes a snapshot every ``every`` applied entries and compacts the log behind it."""

    def __init__(self, node: RaftNode, fsm: FileStoreStateMachine, log_store: DiskLogStore,
                 every: int, executor: Executor, gate: _WriteGate) -> None:
        if every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.node = node
        self.fsm = fsm
        self.log_store = log_store
        self.every = every
        self._executor = executor
        self._gate = gate
        self._last = node.core.snapshot_meta.index
        self._running: defer.Deferred | None = None
        self._stopping = False
        self.taken: list[tuple[int, int, float]] = []
        """(index, bytes, seconds) of each snapshot written, for tests and benchmarks."""
        self.before_compact: list[Callable[[], defer.Deferred]] = []
        """Run (in order) after a snapshot is durable and before the log is compacted
        behind it: whatever the log alone made durable must become durable elsewhere
        first (the small files written on apply without an fsync)."""

    def applied(self, index: int) -> None:
        """The node's on_applied watcher."""
        if self._running is not None or self._stopping:
            return
        base = max(self._last, self.node.core.snapshot_meta.index)
        if index - base >= self.every:
            self.take()

    def take(self) -> defer.Deferred:
        """Snapshot now, at the applied index; fires with its meta (None if skipped)."""
        if self._running is not None or not self._gate.acquire("auto"):
            return defer.succeed(None)
        index = self.node.applied_index
        meta = self.node.snapshot_meta_at(index)
        frozen = self.fsm.freeze()  # on the reactor, between two applies: exactly state `index`
        started = time.monotonic()
        d = self._executor(self._write, meta, frozen.frames())
        self._running = d  # before the callbacks: with an inline executor they run at once
        d.addCallback(self._written, meta, started)
        d.addErrback(self._failed, meta)
        d.addBoth(self._done)
        return d

    def _write(self, meta: SnapshotMeta, frames: Iterable[bytes]) -> int | None:
        """Thread: write and commit; the data's size, or None if a newer snapshot exists."""
        writer = self.log_store.begin_snapshot(meta)
        try:
            size = write_frames(writer, frames, lambda: self._stopping)
        except BaseException:
            writer.abort()
            raise
        return size if self.log_store.commit_snapshot(writer) else None

    def _written(self, size: int | None, meta: SnapshotMeta, started: float) -> Any:
        seconds = time.monotonic() - started
        self._last = max(self._last, meta.index)
        if size is None:
            log.info("{node}: snapshot at index {index} dropped: a newer one is already stored",
                     node=self.node.node_id, index=meta.index)
            return None
        self.taken.append((meta.index, size, seconds))
        log.info("{node} wrote a snapshot at index {index}: {size} bytes in {seconds:.3f} s",
                 node=self.node.node_id, index=meta.index, size=size, seconds=seconds)
        d = defer.succeed(None)
        for hook in self.before_compact:
            d.addCallback(lambda _, hook=hook: hook())
        d.addCallback(lambda _: self.node.compact(meta.index))
        return d.addCallback(lambda _: meta)

    def _failed(self, failure: Failure, meta: SnapshotMeta) -> None:
        if failure.check(_Cancelled, NodeStopped):
            return None
        log.failure("{node}: snapshot at index {index} failed", failure,
                    node=self.node.node_id, index=meta.index)
        return None

    def _done(self, result: Any) -> Any:
        self._running = None
        self._gate.release("auto")
        return result

    def stop(self) -> defer.Deferred:
        """Abandon a snapshot being written; fires once its thread let go."""
        self._stopping = True
        running = self._running
        if running is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        running.addBoth(lambda r: (done.callback(None), r)[1])
        return done


# --- the leader's side -------------------------------------------------------------------

class SnapshotSender:
    """Streams the current snapshot to followers the core wants to send it to."""

    def __init__(self, node: RaftNode, log_store: DiskLogStore, send_message: Callable[[Message], object],
                 address_of: Callable[[str], str], reactor: Any, executor: Executor, *,
                 part_bytes: int = PART_BYTES, timeout: float = 30.0, retry_delay: float = 1.0,
                 connect_to: Callable[..., Any] = connect) -> None:
        self.node = node
        self.log_store = log_store
        self.send_message = send_message
        self.address_of = address_of
        self.reactor = reactor
        self._executor = executor
        self.part_bytes = part_bytes
        self.timeout = timeout
        self.retry_delay = retry_delay
        self._connect = connect_to
        self._active: dict[str, defer.Deferred] = {}
        self._connections: set[Any] = set()
        self._retries: dict[str, Any] = {}
        self._digests: dict[tuple[int, int], tuple[int, str]] = {}
        self._stopped = False
        self.sent: list[tuple[str, int, int]] = []
        """(peer, index, bytes streamed) of each snapshot delivered, for tests."""

    def send(self, msg: Message) -> None:
        """The node's on_snapshot_message sender."""
        peer = msg.to
        if self._stopped or peer in self._active or peer in self._retries:
            return  # the core waits for the report of the transfer already under way
        d = defer.Deferred.fromCoroutine(self._transfer(msg))
        self._active[peer] = d
        d.addCallbacks(self._delivered, self._failed, callbackArgs=(msg,), errbackArgs=(msg,))

    async def _transfer(self, msg: Message) -> tuple[SnapshotMeta, int]:
        started = time.monotonic()
        reader, size, sha = await self._executor(self._open, dict(self._digests))
        try:
            meta = reader.meta
            self._digests[(meta.index, meta.term)] = (size, sha)
            wanted = msg.snapshot or SnapshotMeta()
            if meta.index == 0 or meta.index < wanted.index:
                raise SnapshotUnavailable(f"the snapshot store holds index {meta.index}, "
                                          f"the core sends {wanted.index}")
            address = self.address_of(msg.to)
            if not address:
                raise SnapshotUnavailable(f"no client address known for {msg.to}")
            conn = await defer.Deferred.fromCoroutine(self._connect(self.reactor, address, timeout=5.0))
            self._connections.add(conn)
            try:
                streamed = await self._stream(conn, msg, reader, size, sha)
            finally:
                self._connections.discard(conn)
                conn.close()
        finally:
            reader.close()
        log.info("{node} sent the snapshot at index {index} to {peer}: {bytes} bytes in {s:.3f} s",
                 node=self.node.node_id, index=meta.index, peer=msg.to, bytes=streamed,
                 s=time.monotonic() - started)
        return meta, streamed

    def _open(self, digests: dict[tuple[int, int], tuple[int, str]]) -> tuple[SnapshotReader, int, str]:
        """Thread: a reader over the current snapshot, its size and SHA-256 (computed once per snapshot)."""
        reader = self.log_store.open_snapshot()
        if reader is None:
            raise SnapshotUnavailable("no snapshot to send")
        known = digests.get((reader.meta.index, reader.meta.term))
        if known is not None:
            return reader, known[0], known[1]
        with reader:
            sha = hashlib.sha256()
            # read() checks the header's digest at the end: a damaged file is never sent.
            while chunk := reader.read(_READ_CHUNK):
                sha.update(chunk)
            path, size = reader.path, reader.size
        again = SnapshotReader(path)  # from the start; fails if a newer snapshot replaced it
        return again, size, sha.hexdigest()

    async def _stream(self, conn: Any, msg: Message, reader: SnapshotReader, size: int, sha: str) -> int:
        meta = reader.meta
        first: defer.Deferred = defer.Deferred()

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, SnapshotStored):
                if not first.called:
                    first.callback(None)
                return True
            if isinstance(frame, SnapshotOffset) and not first.called:
                first.callback(frame.offset)
                return False
            raise ProtocolViolation(f"unexpected {type(frame).__name__} in a snapshot transfer")

        def failed(failure: Failure) -> Failure:
            if not first.called:
                first.errback(failure)
            return failure

        stream = conn.request_stream(lambda rid: SnapshotBegin(
            rid, self.node.node_id, msg.term, meta.index, meta.term, tuple(sorted(meta.conf.voters)),
            tuple(sorted(meta.conf.learners)), size, sha), on_frame)
        stream.done.addErrback(failed)
        try:
            return await self._send_data(conn, stream, first, reader, size)
        finally:
            stream.done.addErrback(lambda _: None)  # already reported through `first` or the await

    async def _send_data(self, conn: Any, stream: Any, first: defer.Deferred, reader: SnapshotReader,
                         size: int) -> int:
        meta = reader.meta
        offset = await self._timed(first)
        streamed = 0
        if offset is not None:
            if offset > size:
                raise ProtocolViolation(f"follower claims offset {offset} of a {size}-byte snapshot")
            if offset:
                await self._executor(_skip, reader, offset)
            pos = offset
            while pos < size:
                data = await self._executor(reader.read, self.part_bytes)
                if not data:
                    raise CorruptionError(reader.path, pos, "snapshot file ended early")
                await self._timed(conn.wait_writable(stream))
                stream.send(SnapshotPart(stream.request_id, pos, data))
                pos += len(data)
                streamed += len(data)
            stream.send(SnapshotEnd(stream.request_id))
        stored = await self._timed(stream.done)
        if (stored.index, stored.term) != (meta.index, meta.term):
            raise ProtocolViolation(f"follower stored index {stored.index} term {stored.term}, "
                                    f"not {meta.index} {meta.term}")
        return streamed

    def _timed(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.timeout, self.reactor)

    def _delivered(self, result: tuple[SnapshotMeta, int], msg: Message) -> None:
        meta, streamed = result
        self._active.pop(msg.to, None)
        core = self.node.core
        if self._stopped:
            return
        if core.role != Role.LEADER or core.term != msg.term:
            # A new term: if we lead again, the core may be waiting for a
            # transfer this one stood in for; a failure report makes it retry.
            self.node.report_snapshot(msg.to, False)
            return
        self.sent.append((msg.to, meta.index, streamed))
        self.send_message(dataclasses.replace(msg, snapshot=meta))
        self.node.report_snapshot(msg.to, True)

    def _failed(self, failure: Failure, msg: Message) -> None:
        peer = msg.to
        self._active.pop(peer, None)
        if self._stopped:
            return
        log.warn("{node}: sending the snapshot to {peer} failed, retrying in {delay} s: {why}",
                 node=self.node.node_id, peer=peer, delay=self.retry_delay,
                 why=failure.getErrorMessage() or failure.type.__name__)

        def retry() -> None:
            self._retries.pop(peer, None)
            self.node.report_snapshot(peer, False)

        # The core sends SNAPSHOT again as soon as it hears of the failure:
        # telling it later keeps an unreachable follower from a tight loop.
        self._retries[peer] = self.reactor.callLater(self.retry_delay, retry)

    def stop(self) -> None:
        self._stopped = True
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for conn in list(self._connections):
            conn.abort()


def _skip(reader: SnapshotReader, offset: int) -> None:
    """Thread: read past the first ``offset`` bytes (the reader hashes everything it reads)."""
    left = offset
    while left > 0:
        data = reader.read(min(_READ_CHUNK, left))
        if not data:
            raise CorruptionError(reader.path, offset - left, "snapshot file ended early")
        left -= len(data)


# --- the follower's side -------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class _Partial:
    """A snapshot being received; kept across a dropped connection for a resume."""

    meta: SnapshotMeta
    size: int
    sha256: str
    writer: SnapshotWriter
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)
    offset: int = 0
    resumed_from: int = 0
    busy: bool = False
    owner: tuple[Any, int] | None = None

    @property
    def key(self) -> tuple[int, int, int, str]:
        return self.meta.index, self.meta.term, self.size, self.sha256

    def write(self, data: bytes) -> None:
        """Thread: append ``data``."""
        self.writer.write(data)
        self.hasher.update(data)


class SnapshotReceiver:
    """Client-port handlers that receive a snapshot from the leader into the snapshot store."""

    def __init__(self, node: RaftNode, log_store: DiskLogStore, executor: Executor, gate: _WriteGate, *,
                 max_part: int = MAX_PART_BYTES, max_size: int = MAX_SNAPSHOT_BYTES) -> None:
        self.node = node
        self.log_store = log_store
        self._executor = executor
        self._gate = gate
        self.max_part = max_part
        self.max_size = max_size
        self._partial: _Partial | None = None
        self._opening = False
        self._stopped = False
        self.stored: list[tuple[int, int]] = []
        """(index, offset the last connection resumed from) of each snapshot stored, for tests."""

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return {SnapshotBegin: self.begin, SnapshotPart: self.part, SnapshotEnd: self.end}

    # -- SnapshotBegin ----------------------------------------------------------------

    def begin(self, req: SnapshotBegin, conn: Any) -> Any:
        core = self.node.core
        if self._stopped:
            raise RequestError(ErrorCode.UNAVAILABLE, "node is stopping")
        if not req.leader or req.leader == self.node.node_id or req.leader != core.leader \
                or req.term != core.term:
            raise RequestError(ErrorCode.NOT_LEADER,
                               f"{req.leader or '?'} in term {req.term} is not the leader "
                               f"{self.node.node_id} follows (term {core.term}, leader {core.leader or 'unknown'})")
        if req.index == 0 or not 0 < req.snap_term <= req.term or not req.voters:
            raise RequestError(ErrorCode.BAD_REQUEST, f"not a snapshot: index {req.index} term {req.snap_term}")
        if req.size > self.max_size:
            raise RequestError(ErrorCode.BAD_REQUEST, f"a {req.size}-byte snapshot is over the limit")
        if req.index <= core.commit_index:
            # Everything the snapshot covers is already here: nothing to send.
            return SnapshotStored(req.request_id, req.index, req.snap_term)
        partial = self._partial
        if self._opening or (partial is not None and partial.busy):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot write is in progress; retry")
        meta = SnapshotMeta(req.index, req.snap_term, ConfState(frozenset(req.voters), frozenset(req.learners)))
        if partial is not None and partial.key == (req.index, req.snap_term, req.size, req.sha256):
            self._bind(partial, conn, req.request_id)
            partial.resumed_from = partial.offset
            log.info("{node}: resuming the snapshot at index {index} from {leader} at byte {offset}",
                     node=self.node.node_id, index=req.index, leader=req.leader, offset=partial.offset)
            return SnapshotOffset(req.request_id, partial.offset)
        if partial is not None:
            self._discard()
        self._opening = True
        d = self._executor(self.log_store.begin_snapshot, meta)

        def opened(writer: SnapshotWriter) -> SnapshotOffset:
            self._opening = False
            if self._stopped:
                writer.abort()
                raise RequestError(ErrorCode.UNAVAILABLE, "node is stopping")
            fresh = _Partial(meta, req.size, req.sha256, writer)
            self._partial = fresh
            self._bind(fresh, conn, req.request_id)
            log.info("{node}: receiving the snapshot at index {index} ({size} bytes) from {leader}",
                     node=self.node.node_id, index=req.index, size=req.size, leader=req.leader)
            return SnapshotOffset(req.request_id, 0)

        def failed(failure: Failure) -> Failure:
            self._opening = False
            return failure

        return d.addCallbacks(opened, failed)

    def _bind(self, partial: _Partial, conn: Any, request_id: int) -> None:
        partial.owner = (conn, request_id)
        conn.on_close(lambda: self._unbind(conn))

    def _unbind(self, conn: Any) -> None:
        partial = self._partial
        if partial is not None and partial.owner is not None and partial.owner[0] is conn:
            partial.owner = None  # the data stays for a resume

    def _owned(self, conn: Any, request_id: int) -> _Partial | None:
        partial = self._partial
        if partial is None or partial.owner is None:
            return None
        owner_conn, owner_id = partial.owner
        return partial if owner_conn is conn and owner_id == request_id else None

    def _refuse(self, conn: Any, request_id: int, code: ErrorCode, why: str) -> None:
        """A broken transfer: answer with the error and drop the connection (the partial data stays)."""
        log.warn("{node}: refusing snapshot frames: {why}", node=self.node.node_id, why=why)
        self._unbind(conn)
        conn.send_error(request_id, RequestError(code, why))
        conn.close_connection()

    def _discard(self) -> None:
        partial, self._partial = self._partial, None
        if partial is not None:
            self._executor(partial.writer.abort)

    # -- SnapshotPart -----------------------------------------------------------------

    def part(self, req: SnapshotPart, conn: Any) -> None:
        partial = self._owned(conn, req.request_id)
        if partial is None:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST, "no snapshot transfer of this request")
            return None
        size = len(req.data)
        if req.offset != partial.offset or partial.busy:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"part at offset {req.offset}, expected {partial.offset}")
            return None
        if size == 0 or size > self.max_part or req.offset + size > partial.size:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"part of {size} bytes at {req.offset} does not fit a {partial.size}-byte "
                         f"snapshot in parts of at most {self.max_part}")
            return None
        partial.busy = True
        conn.pause_reading()  # the next part waits for this write: memory stays bounded

        def written(_: Any) -> None:
            partial.busy = False
            partial.offset += size
            conn.resume_reading()

        def failed(failure: Failure) -> None:
            partial.busy = False
            if self._partial is partial:
                self._discard()
            conn.resume_reading()
            self._refuse(conn, req.request_id, ErrorCode.INTERNAL,
                         f"cannot write the snapshot: {failure.getErrorMessage()}")

        self._executor(partial.write, req.data).addCallbacks(written, failed)
        return None

    # -- SnapshotEnd ------------------------------------------------------------------

    def end(self, req: SnapshotEnd, conn: Any) -> Any:
        partial = self._owned(conn, req.request_id)
        if partial is None or partial.busy:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST, "no snapshot transfer of this request")
            return None
        if partial.offset != partial.size:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"snapshot ended at byte {partial.offset} of {partial.size}")
            return None
        meta = partial.meta
        if partial.hasher.hexdigest() != partial.sha256:
            self._discard()
            raise RequestError(ErrorCode.INTEGRITY, f"snapshot at index {meta.index}: SHA-256 mismatch")
        if meta.index <= self.node.core.commit_index:
            # Caught up by the log meanwhile: this older state must not replace our snapshots.
            self._discard()
            return SnapshotStored(req.request_id, meta.index, meta.term)
        if not self._gate.acquire("receive"):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot is being written; retry")
        self._partial = None
        partial.busy = True
        d = self._executor(functools.partial(self.log_store.commit_snapshot, replace_newer=True),
                           partial.writer)

        def committed(_: Any) -> SnapshotStored:
            self.stored.append((meta.index, partial.resumed_from))
            log.info("{node} stored the snapshot at index {index} ({size} bytes) from the leader",
                     node=self.node.node_id, index=meta.index, size=partial.size)
            return SnapshotStored(req.request_id, meta.index, meta.term)

        def release(result: Any) -> Any:
            self._gate.release("receive")
            return result

        return d.addCallback(committed).addBoth(release)

    def stop(self) -> None:
        self._stopped = True
        if self._partial is not None and not self._partial.busy:
            self._discard()


# --- assembly --------------------------------------------------------------------------

class NodeSnapshots:
    """Everything about snapshots on one node, attached to its RaftNode."""

    def __init__(self, node: RaftNode, fsm: FileStoreStateMachine, log_store: DiskLogStore, *,
                 every: int, reactor: Any, address_of: Callable[[str], str],
                 send_message: Callable[[Message], object], executor: Executor | None = None,
                 **sender_options: Any) -> None:
        self.node = node
        self.fsm = fsm
        self.log_store = log_store
        self.reactor = reactor
        self._pool = None
        if executor is None:
            executor, self._pool = _threaded_executor(reactor, f"storg-snapshots-{node.node_id}", 3)
        self._executor = executor
        gate = _WriteGate()
        self.auto = AutoSnapshots(node, fsm, log_store, every, executor, gate)
        self.sender = SnapshotSender(node, log_store, send_message, address_of, reactor, executor,
                                     **sender_options)
        self.receiver = SnapshotReceiver(node, log_store, executor, gate)
        self.restored: list[tuple[int, float]] = []
        """(index, seconds) of each snapshot restored from the leader."""
        self.installed: list[Callable[[int], object]] = []
        """Called with the index after each snapshot from the leader is installed in the
        state machine: the node then fetches the chunk copies its new map says it holds."""
        node.on_snapshot(self.restore)
        node.on_snapshot_message(self.sender.send)
        node.on_applied(self.auto.applied)

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return self.receiver.handlers()

    def restore(self, meta: SnapshotMeta) -> defer.Deferred | None:
        """The core adopted ``meta`` (the node's on_snapshot handler): install its data.

        Index 0 is a joiner's membership, persisted by the log store, with
        no data.  Otherwise the data was stored by the receiver before the
        leader sent the message; it is decoded in a thread and installed on
        the reactor, before the node applies anything after it.
        """
        if meta.index == 0:
            return None
        started = time.monotonic()
        d = self._executor(_read_snapshot_file, self.log_store, meta)

        def install(loaded: LoadedSnapshot | None) -> None:
            if loaded is not None:
                self.fsm.install(loaded)
            seconds = time.monotonic() - started
            self.restored.append((meta.index, seconds))
            log.info("{node} installed the leader's snapshot at index {index} in {seconds:.3f} s "
                     "({files} files)", node=self.node.node_id, index=meta.index, seconds=seconds,
                     files=self.fsm.stats()["files"])
            for listener in self.installed:
                try:
                    listener(meta.index)
                except Exception:  # a listener's bug must not fail the install
                    log.failure("snapshot install listener failed")

        return d.addCallback(install)

    @defer.inlineCallbacks
    def stop(self):
        self.sender.stop()
        self.receiver.stop()
        yield self.auto.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            from twisted.internet.threads import deferToThread
            yield deferToThread(pool.stop)


__all__ = [
    "AutoSnapshots", "MAX_PART_BYTES", "NodeSnapshots", "PART_BYTES", "SnapshotReceiver",
    "SnapshotSender", "SnapshotUnavailable", "load_snapshot", "read_frames", "write_frames",
]
