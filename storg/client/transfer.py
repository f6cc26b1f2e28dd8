"""File transfers of the client library: one attempt of a put or a get on one connection.

The retry policy (which node, until when) lives in :mod:`storg.client.api`;
here is what one attempt does, with memory bounded whatever the file size:

* a put reads its source in pieces of the leader's ``max_frame`` in a
  thread (a local disk or a pipe may block), hashing in the same thread,
  keeps at most one piece read ahead, and sends a piece only once the
  connection's transport has drained (:meth:`RequestConnection.wait_writable`);
* a put of a small file of known size (at most :data:`SMALL_PUT` bytes,
  and within the ``max_frame`` of the connection's last PutReady) is read
  whole first and sent as PutStart, PutData, PutEnd back to back, without
  waiting for PutReady: one round trip instead of two.  The node handles
  the frames in order; if it refuses the PutStart, it refuses the rest too,
  and those late errors are dropped with the request;
* a get hands the GetData frames to a writer (a write and a hash thread job
  side by side; everything queued meanwhile goes in one batch), and stops reading
  the socket while more than :data:`SINK_HIGH_WATER` bytes wait for the
  sink.  The payloads are views of the received frames, never copied.  A
  sink that will be fsynced at the end (a temp file) is fdatasync'ed in
  the background every :data:`SYNC_EVERY` bytes, so the final fsync does
  not find a gigabyte still to write;
* an in-memory source or sink (``io.BytesIO``) is read or written on the
  reactor thread: it cannot block, and a thread hop per frame would cost
  more than the copy.

A stalled node is not waited on forever: every attempt has a watchdog that
drops the connection after ``timeout`` seconds without progress, while a
transfer that keeps moving is never cut off.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import defer, threads

from storg.net.connection import RequestConnection, Stream
from storg.client.errors import (
    ClusterUnavailable,
    IntegrityError,
    LocalError,
    ProtocolViolation,
)
from storg.wire import MAX_FRAME_BYTES
from storg.wire.files import (
    FileInfo,
    GetData,
    GetEnd,
    GetRequest,
    GetStart,
    PutData,
    PutDone,
    PutEnd,
    PutReady,
    PutStart,
)

Progress = Callable[[int, "int | None"], None]
"""``progress(bytes_done, total_or_None)``; called on the reactor thread."""

SINK_HIGH_WATER = 4 * 1024 * 1024
"""Bytes received but not yet written before a get stops reading its connection."""

SINK_LOW_WATER = 1 * 1024 * 1024
"""Reading resumes once the writer is back under this many bytes."""

SYNC_EVERY = 64 * 1024 * 1024
"""Bytes written to a ``sync`` sink between two background fdatasyncs."""

MAX_PIECE = MAX_FRAME_BYTES - 1024
"""Never trust a server's max_frame beyond what one frame can carry."""

SMALL_PUT = 64 * 1024
"""Sources up to this size may be put in one round trip (PutData sent before PutReady),
when they also fit in the ``max_frame`` the node gave on this connection before."""


def _no_progress(done: int, total: int | None) -> None:
    pass


class Deadline:
    """How long a client may still wait; pushed back whenever a transfer makes progress.

    ``progressed`` tells the retry loop that the attempt under way moved
    something, so that its failure counts as an interrupted transfer (of
    which only a few are retried: a node failing every transfer halfway
    would otherwise keep the deadline moving forever).
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.at = reactor.seconds() + timeout
        self.progressed = False

    def remaining(self) -> float:
        return self.at - self.reactor.seconds()

    def extend(self) -> None:
        self.progressed = True
        self.at = max(self.at, self.reactor.seconds() + self.timeout)


class Watchdog:
    """Drops a connection after a quiet spell: a node that stops answering mid-transfer."""

    def __init__(self, reactor: Any, conn: RequestConnection, delay: float) -> None:
        self.reactor = reactor
        self.conn = conn
        self.fired = False
        self._call = reactor.callLater(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.conn.abort()

    def reset(self, delay: float) -> None:
        if self._call.active():
            self._call.reset(delay)

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


def _in_thread(reactor: Any, f: Callable[..., Any], *args: Any) -> defer.Deferred:
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def _consume(d: defer.Deferred) -> None:
    """Mark a Deferred's failure as seen (we already acted on it another way)."""
    d.addErrback(lambda _: None)


# --- put -----------------------------------------------------------------------

class UploadSource:
    """A put's bytes: a local file (re-readable) or a binary stream such as stdin (read once).

    ``consumed`` turns true with the first byte read; a put may be retried
    from the start only while :meth:`can_restart` holds.
    """

    def __init__(self, fileobj: BinaryIO, *, owned: bool = False) -> None:
        self.f = fileobj
        self.owned = owned
        try:
            self.seekable = bool(fileobj.seekable())
            self.start = fileobj.tell() if self.seekable else 0
        except (OSError, ValueError, AttributeError):
            self.seekable = False
            self.start = 0
        self.in_memory = isinstance(fileobj, io.BytesIO)
        self.size = self._size()
        self.consumed = False

    @classmethod
    def open(cls, path: str | os.PathLike) -> UploadSource:
        """Open a local file; an unreadable one is a LocalError (storgctl exit 2)."""
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise LocalError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
        return cls(f, owned=True)

    def _size(self) -> int | None:
        if self.in_memory:
            return max(len(self.f.getbuffer()) - self.start, 0)
        try:
            st = os.fstat(self.f.fileno())
        except (OSError, ValueError, AttributeError):
            return None
        if stat.S_ISREG(st.st_mode):
            return max(st.st_size - self.start, 0)
        return None

    def can_restart(self) -> bool:
        return self.seekable or not self.consumed

    def rewind(self) -> None:
        if self.consumed and self.seekable:
            self.f.seek(self.start)

    def read_small(self, reactor: Any, limit: int) -> defer.Deferred:
        """Fires with the whole content if it is known to be at most ``limit`` bytes, else None.

        Nothing counts as read after None: the caller goes on with
        :meth:`read_piece` from the start.  A regular file that grew past
        ``limit`` meanwhile is rewound.
        """
        if self.size is None or self.size > limit or not self.seekable:
            return defer.succeed(None)
        if self.in_memory:
            self.consumed = True
            return defer.maybeDeferred(self._read_whole, limit)
        self.consumed = True
        return _in_thread(reactor, self._read_whole, limit)

    def _read_whole(self, limit: int) -> bytes | None:
        try:
            data = self.f.read(limit + 1)
            if data is None or len(data) > limit:
                self.f.seek(self.start)
                return None
        except (OSError, ValueError) as exc:
            raise LocalError(f"reading the source failed: {exc}") from None
        return bytes(data)

    def read_piece(self, reactor: Any, size: int, hasher: Any) -> defer.Deferred:
        """Read up to ``size`` bytes (fewer only at the end) and hash them, off the reactor thread."""
        self.consumed = True
        if self.in_memory:
            return defer.maybeDeferred(self._read_and_hash, size, hasher)
        return _in_thread(reactor, self._read_and_hash, size, hasher)

    def _read_and_hash(self, size: int, hasher: Any) -> bytes:
        try:
            data = self.f.read(size)
        except (OSError, ValueError) as exc:
            raise LocalError(f"reading the source failed: {exc}") from None
        if data is None:  # a non-blocking stream with nothing ready
            raise LocalError("the source is a non-blocking stream")
        hasher.update(data)
        return bytes(data)

    def close(self) -> None:
        if self.owned:
            self.f.close()


class Upload:
    """One put, retried as a whole (same ``client_id`` and ``seq``) by the caller's loop."""

    def __init__(self, reactor: Any, source: UploadSource, path: str, client_id: int, seq: int,
                 progress: Progress | None = None) -> None:
        self.reactor = reactor
        self.source = source
        self.path = path
        self.client_id = client_id
        self.seq = seq
        self.progress = progress or _no_progress
        self.interrupted = ""

    async def attempt(self, conn: RequestConnection, deadline: Deadline) -> FileInfo:
        if not self.source.can_restart():
            raise ClusterUnavailable(
                f"the upload was interrupted ({self.interrupted or 'leader changed'}) "
                "and its source cannot be read again")
        self.source.rewind()
        small = None
        if conn.max_frame is not None:
            small = await self.source.read_small(self.reactor, min(SMALL_PUT, conn.max_frame))
        if small is not None:
            return await self._attempt_small(conn, deadline, small)
        ready: defer.Deferred = defer.Deferred()

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, PutReady) and not ready.called:
                ready.callback(frame)
                return False
            if isinstance(frame, PutDone) and ready.called:
                return True
            raise ProtocolViolation(f"unexpected {type(frame).__name__} during a put")

        def fail_ready(failure: Any) -> Any:
            if not ready.called:
                ready.errback(failure)
            return failure

        stream = conn.request_stream(
            lambda rid: PutStart(rid, self.path, self.client_id, self.seq), on_frame)
        stream.done.addErrback(fail_ready)
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        pending: defer.Deferred | None = None
        try:
            max_frame = (await ready).max_frame
            if not 0 < max_frame:
                raise ProtocolViolation(f"PutReady with max_frame {max_frame}")
            conn.max_frame = max_frame
            piece = min(max_frame, MAX_PIECE)
            deadline.extend()
            watchdog.reset(deadline.timeout)
            hasher = hashlib.sha256()
            sent = 0
            self.progress(0, self.source.size)
            pending = self.source.read_piece(self.reactor, piece, hasher)
            while True:
                data = await pending
                pending = None
                if not data:
                    break
                pending = self.source.read_piece(self.reactor, piece, hasher)
                await conn.wait_writable(stream)
                stream.send(PutData(stream.request_id, data))
                sent += len(data)
                deadline.extend()
                watchdog.reset(deadline.timeout)
                self.progress(sent, self.source.size)
            stream.send(PutEnd(stream.request_id, sent, hasher.hexdigest()))
            reply = await stream.done
            return reply.info
        except LocalError:
            # The server holds half an upload under this request id: the
            # protocol's only way to make it let go is to drop the connection.
            conn.abort()
            raise
        except Exception as exc:
            self.interrupted = str(exc) or type(exc).__name__
            raise
        finally:
            watchdog.cancel()
            _consume(stream.done)
            if not stream.finished:
                stream.abort(ProtocolViolation("put abandoned"))
            if pending is not None:
                _consume(pending)
                if self.source.seekable:
                    # A read still running in a thread must end before a retry seeks.
                    await defer.DeferredList([pending], consumeErrors=True)

    async def _attempt_small(self, conn: RequestConnection, deadline: Deadline, data: bytes) -> FileInfo:
        """The whole put in one round trip: PutStart, PutData, PutEnd without waiting for PutReady.

        A node that reads all three at once answers PutDone alone; one that
        reads them apart sends PutReady first.
        """
        ready = [False]

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, PutReady) and not ready[0]:
                ready[0] = True
                conn.max_frame = frame.max_frame
                if frame.max_frame < len(data):
                    raise ProtocolViolation(
                        f"PutReady with max_frame {frame.max_frame}, below the {len(data)} bytes sent")
                return False
            if isinstance(frame, PutDone):
                return True  # a node may skip PutReady when the PutEnd came with the PutStart
            raise ProtocolViolation(f"unexpected {type(frame).__name__} during a put")

        digest = hashlib.sha256(data).hexdigest()
        self.progress(0, len(data))
        stream = conn.request_stream(
            lambda rid: PutStart(rid, self.path, self.client_id, self.seq), on_frame)
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        try:
            if data and not stream.finished:
                stream.send(PutData(stream.request_id, data))
            if not stream.finished:
                stream.send(PutEnd(stream.request_id, len(data), digest))
            reply = await stream.done
            deadline.extend()
            self.progress(len(data), len(data))
            return reply.info
        except Exception as exc:
            self.interrupted = str(exc) or type(exc).__name__
            raise
        finally:
            watchdog.cancel()
            _consume(stream.done)
            if not stream.finished:
                stream.abort(ProtocolViolation("put abandoned"))


# --- get -----------------------------------------------------------------------

class DownloadSink:
    """Where a get's bytes go; a seekable sink can be emptied and refilled by a retry.

    ``sync=True``: the file will be fsynced once complete (AtomicFile), so
    flushing it to disk early, in the background, only moves that work.
    """

    def __init__(self, fileobj: BinaryIO, sync: bool = False) -> None:
        self.f = fileobj
        self.sync = sync
        try:
            self.seekable = bool(fileobj.seekable())
            self.start = fileobj.tell() if self.seekable else 0
        except (OSError, ValueError, AttributeError):
            self.seekable = False
            self.start = 0
        self.in_memory = isinstance(fileobj, io.BytesIO)
        self.dirty = False

    def can_restart(self) -> bool:
        return self.seekable or not self.dirty

    def restart(self) -> None:
        if self.dirty and self.seekable:
            self.f.seek(self.start)
            self.f.truncate()
            self.dirty = False

    def write_and_hash(self, data: bytes, hasher: Any) -> None:
        """Runs in the writer thread; never on the reactor."""
        try:
            self.f.write(data)
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None
        hasher.update(data)

    def write_many(self, pieces: list) -> None:
        """Runs in a thread: write each piece, in order (hashing runs beside it)."""
        try:
            for data in pieces:
                self.f.write(data)
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None

    def sync_now(self) -> None:
        """Runs in a thread beside the writer: push what the kernel holds to disk.

        Large writes bypass the file object's buffer, so the descriptor has
        them; whatever is still buffered is the final fsync's business.
        """
        try:
            os.fdatasync(self.f.fileno())
        except (OSError, ValueError):
            pass  # the final fsync reports real trouble

    def flush(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None


def _hash_all(hasher: Any, pieces: list) -> None:
    for data in pieces:
        hasher.update(data)


class _SinkWriter:
    """One writer thread at a time per get, in order; reading pauses when it falls behind."""

    def __init__(self, reactor: Any, conn: RequestConnection, sink: DownloadSink,
                 on_written: Callable[[int], None], on_error: Callable[[Exception], None]) -> None:
        self.reactor = reactor
        self.conn = conn
        self.sink = sink
        self.hasher = hashlib.sha256()
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.written = 0
        self.paused = False
        self.stopped = False
        self._on_written = on_written
        self._on_error = on_error
        self._busy: defer.Deferred | None = None
        self._syncing: defer.Deferred | None = None
        self._synced = 0

    def write(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.sink.in_memory and self._busy is None:
            # Nothing queued: write in place (see the module docstring).
            self.sink.dirty = True
            try:
                self.sink.write_and_hash(data, self.hasher)
            except LocalError as exc:
                self.stop()
                self._on_error(exc)
                return
            self.written += len(data)
            self._on_written(self.written)
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > SINK_HIGH_WATER and not self.paused:
            self.paused = True
            self.conn.pause_reading()
        if self._busy is None:
            self._next()

    def _next(self) -> None:
        if self.stopped or not self.queue:
            self._busy = None
            return
        batch = list(self.queue)
        self.queue.clear()
        self.sink.dirty = True
        # The write and the hash of a batch run in two threads at once: the
        # whole-file hash is the one serial step of a get, so nothing else
        # waits in line with it.  The next batch starts when both are done.
        written = _in_thread(self.reactor, self.sink.write_many, batch)
        hashed = _in_thread(self.reactor, _hash_all, self.hasher, batch)
        both = defer.gatherResults([written, hashed], consumeErrors=True)
        both.addErrback(lambda failure: failure.value.subFailure)
        self._busy = both
        both.addCallbacks(self._done, self._failed, callbackArgs=(sum(map(len, batch)),))

    def _done(self, _: Any, size: int) -> None:
        self.queued -= size
        self.written += size
        if self.paused and self.queued <= SINK_LOW_WATER:
            self.paused = False
            self.conn.resume_reading()
        self._on_written(self.written)
        self._next()
        if self.sink.sync and self._syncing is None and self.written - self._synced >= SYNC_EVERY:
            self._synced = self.written
            self._syncing = _in_thread(self.reactor, self.sink.sync_now)
            self._syncing.addBoth(self._sync_done)

    def _sync_done(self, _: Any) -> None:
        self._syncing = None

    def _failed(self, failure: Any) -> None:
        self._busy = None
        self.stop()
        self._on_error(failure.value if isinstance(failure.value, LocalError)
                       else LocalError(f"writing the output failed: {failure.value}"))

    def stop(self) -> None:
        """Discard what is queued and let reading go on (the attempt is over)."""
        self.stopped = True
        self.queue.clear()
        if self.paused:
            self.paused = False
            self.conn.resume_reading()

    async def drain(self) -> None:
        """Wait until everything handed to :meth:`write` is written (or the writer stopped),
        and no background sync still uses the file."""
        while self._busy is not None:
            busy = self._busy
            await defer.DeferredList([busy], consumeErrors=True)
            if self._busy is busy:
                break
        if self._syncing is not None:
            await defer.DeferredList([self._syncing], consumeErrors=True)


class Download:
    """One get; retried on another node by the caller's loop while the sink allows it."""

    def __init__(self, reactor: Any, sink: DownloadSink, path: str, stale: bool,
                 progress: Progress | None = None) -> None:
        self.reactor = reactor
        self.sink = sink
        self.path = path
        self.stale = stale
        self.progress = progress or _no_progress

    async def attempt(self, conn: RequestConnection, deadline: Deadline) -> FileInfo:
        if not self.sink.can_restart():
            raise ClusterUnavailable("the node was lost after part of the file was written out")
        self.sink.restart()
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        info: list[FileInfo] = []
        received = [0]
        stream_box: list[Stream] = []

        def moved(written: int) -> None:
            deadline.extend()
            watchdog.reset(deadline.timeout)
            self.progress(written, info[0].size if info else None)

        def write_failed(exc: Exception) -> None:
            if stream_box:
                stream_box[0].abort(exc)

        writer = _SinkWriter(self.reactor, conn, self.sink, moved, write_failed)

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, GetStart) and not info:
                info.append(frame.info)
                deadline.extend()
                watchdog.reset(deadline.timeout)
                self.progress(0, frame.info.size)
                return False
            if isinstance(frame, GetData) and info:
                received[0] += len(frame.data)
                if received[0] > info[0].size:
                    raise IntegrityError(
                        f"{self.path}: received more than its {info[0].size} bytes")
                writer.write(frame.data)
                deadline.extend()
                watchdog.reset(deadline.timeout)
                return False
            if isinstance(frame, GetEnd) and info:
                return True
            raise ProtocolViolation(f"unexpected {type(frame).__name__} during a get")

        stream = conn.request_stream(lambda rid: GetRequest(rid, self.path, self.stale), on_frame)
        stream_box.append(stream)
        try:
            await stream.done
            await writer.drain()
            if writer.stopped:
                raise LocalError("writing the output failed")
            if self.sink.in_memory:
                self.sink.flush()
            else:
                await _in_thread(self.reactor, self.sink.flush)
            meta = info[0]
            if writer.written != meta.size:
                raise IntegrityError(
                    f"{self.path}: received {writer.written} bytes, expected {meta.size}")
            digest = writer.hasher.hexdigest()
            if digest != meta.sha256:
                raise IntegrityError(
                    f"{self.path}: SHA-256 mismatch (got {digest}, expected {meta.sha256})")
            return meta
        finally:
            watchdog.cancel()
            _consume(stream.done)
            if not stream.finished:
                stream.abort(ProtocolViolation("get abandoned"))
            writer.stop()
            await writer.drain()


# --- atomic local files ------------------------------------------------------------

class AtomicFile:
    """A file written under a temporary name in the target's folder, renamed at the end.

    Readers of ``target`` see the old file or the whole new one; a failed
    get leaves the old file untouched and no partial file behind.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        target = os.fspath(target)
        if os.path.isdir(target):
            raise LocalError(f"{target} is a directory")
        self.target = target
        folder = os.path.dirname(os.path.abspath(target))
        try:
            fd, self.temp = tempfile.mkstemp(
                dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".storg-part")
        except OSError as exc:
            raise LocalError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        self.f: BinaryIO = os.fdopen(fd, "w+b")
        self.finished = False

    def commit(self) -> None:
        """Make the content durable, then give it the target's name (mode as a new file's)."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temp, 0o666 & ~umask)
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.discard()
            raise LocalError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        self.finished = True

    def discard(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
