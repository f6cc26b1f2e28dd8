"""Streams for a caller that produces or consumes the bytes itself: the S3 gateway.

:class:`PutStream` is a put whose bytes are pushed by the caller as they
arrive (an HTTP request body): ``write`` sends them to the leader in
frames of its ``max_frame`` and fires once the connection can take more,
which is the caller's flow control; ``finish`` commits only when the
caller has validated the body (its signature, its checksums), and may
give the object's final attributes then (a checksum from an aws-chunked
trailer), which go into the put's one entry; ``abort`` drops the upload
without committing anything.  It is the same upload protocol as
:meth:`StorgClient.put` (PutStart..., PutData, PutEnd or PutEndObject)
with the same start and end frames (:func:`~storg.client.upload.start_frame`,
:func:`~storg.client.upload.end_frame`);
what differs is who drives it: a pushed body cannot be read again, so a
lost connection fails the put (ClusterUnavailable) instead of retrying.

:class:`GetStream` is a get, ranged or whole, that hands each piece to the
caller's ``write`` (which may return a Deferred: the connection is not
read until it fires).  Pieces are verified before they are handed on:
whole chunks by their digest (the node also checks each chunk before it
sends it, which covers the cut chunks at a range's ends); a whole-file
read is checked against the file's SHA-256 at the end (a composite's,
part by part).  Hashing runs in the reactor's thread pool.  After a lost
connection the get resumes at the next offset on another node, provided
the file is still the same version.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import error as net_error

from storg.client.errors import BadRequest, ClusterUnavailable, IntegrityError, LocalError, ProtocolViolation
from storg.client.transfer import MAX_PIECE, Deadline, Watchdog, consume, hash_off_reactor, in_thread
from storg.client.upload import end_frame
from storg.net.connection import RequestConnection, Stream
from storg.net.verify import PartsHasher, content_hasher
from storg.wire.files import WHOLE, FileInfo, GetData, GetEnd, GetRequest, GetStart, PutData
from storg.wire.objects import ObjectAttrs, PutAbort

_LOST = (net_error.ConnectError, net_error.ConnectionClosed, defer.TimeoutError, defer.CancelledError,
         ProtocolViolation, ConnectionError)
"""A lost connection or node: a pushed put cannot be sent again, so it fails as ClusterUnavailable."""


class PutStream:
    """A put fed by the caller (see the module docstring); made by :meth:`StorgClient.put_stream`."""

    def __init__(self, reactor: Any, opened: defer.Deferred, size: int | None,
                 release: Callable[[], None]) -> None:
        self.reactor = reactor
        self.size = size
        self._release = release
        self._sha = hashlib.sha256()
        self._sent = 0
        self._last: defer.Deferred = opened.addCallback(self._opened)
        self._conn: RequestConnection | None = None
        self._stream: Stream | None = None
        self._piece = MAX_PIECE
        self._over = False
        self._error: Exception | None = None

    def _opened(self, opening: tuple[RequestConnection, Stream, int]) -> None:
        self._conn, self._stream, max_frame = opening
        self._piece = min(max_frame, MAX_PIECE)
        if self._over:  # aborted while the leader was being found
            self._send_abort()

    def write(self, data: bytes) -> defer.Deferred:
        """Send ``data``; fires when more may be written.  Fails (with ClusterUnavailable for a lost
        connection, or the node's refusal) if the put cannot go on."""
        if self._over:
            return defer.fail(self._error or ProtocolViolation("the put stream is finished"))
        data = bytes(data)
        if self.size is not None and self._sent + len(data) > self.size:
            self.abort()
            return defer.fail(IntegrityError(f"more than the {self.size} bytes announced"))
        self._sent += len(data)
        d = self._last.addCallback(lambda _: defer.Deferred.fromCoroutine(self._send(data)))
        self._last = d
        out: defer.Deferred = defer.Deferred()

        def failed(failure: Any) -> None:
            # Every later write or finish fails the same way: the put cannot go on.
            self._error = self._error or failure.value
            self._over = True
            self._end()
            out.errback(failure)

        d.addCallbacks(lambda _: out.callback(None), failed)
        return out

    async def _send(self, data: bytes) -> None:
        """Hash ``data`` (in a thread), then send it as the connection drains.

        Both before ``write`` fires: a piece is let go of only once it is
        hashed and handed to the transport, so memory stays bounded by the
        caller's pieces in flight even when hashing is the slower side.
        """
        conn, stream = self._conn, self._stream
        assert conn is not None and stream is not None
        await hash_off_reactor(self.reactor, self._sha.update, data)
        for pos in range(0, len(data), self._piece):
            try:
                await conn.wait_writable(stream)
            except Exception as exc:
                raise self._fail(exc) from None
            stream.send(PutData(stream.request_id, data[pos:pos + self._piece]))

    def finish(self, attrs: ObjectAttrs | None = None) -> defer.Deferred:
        """Commit: fires with the FileInfo (``version`` is the put's log index) once applied.

        ``attrs``, if given, are the object's attributes in place of those
        given to ``put_stream`` (the gateway's checksum from a trailer,
        known only now), stored in the put's own entry: one commit.  An
        empty ``etag`` is filled with the node's MD5, as at the start.
        """
        if self._over:
            return defer.fail(self._error or ProtocolViolation("the put stream is finished"))
        return defer.Deferred.fromCoroutine(self._finish(attrs))

    async def _finish(self, attrs: ObjectAttrs | None) -> FileInfo:
        try:
            await self._last
            if self.size is not None and self._sent != self.size:
                self.abort()
                raise IntegrityError(f"{self._sent} bytes written, {self.size} announced")
            stream = self._stream
            assert stream is not None
            self._over = True
            stream.send(end_frame(stream.request_id, self._sent, self._sha.hexdigest(), attrs))
            try:
                reply = await stream.done
            except Exception as exc:
                raise self._fail(exc) from None
            return reply.info
        finally:
            self._over = True
            self._end()

    def abort(self) -> None:
        """Give the put up: nothing is committed; its chunks are collected later."""
        if self._stream is not None and not self._stream.finished:
            self._send_abort()
        self._over = True
        self._error = self._error or ProtocolViolation("the put stream was aborted")
        consume(self._last)  # an opening that fails now (or was refused) is no one's error
        self._end()

    def _send_abort(self) -> None:
        stream = self._stream
        if stream is not None and not stream.finished:
            try:
                stream.send(PutAbort(stream.request_id))
            except Exception:  # noqa: BLE001 -- the connection is gone: nothing to abort there
                pass
            stream.abort(ProtocolViolation("put aborted"))
            consume(stream.done)

    def _fail(self, exc: Exception) -> Exception:
        if isinstance(exc, _LOST):
            exc = ClusterUnavailable(f"the connection to the leader was lost during the put ({exc})")
        self._error = exc
        self._over = True
        return exc

    def _end(self) -> None:
        release, self._release = self._release, lambda: None
        release()


class GetStream:
    """One ranged or whole get fed to a caller's ``write``, resumed after a lost node."""

    def __init__(self, reactor: Any, path: str, write: Callable[[bytes], Any], *, offset: int,
                 length: int | None, stale: bool, on_start: Callable[[FileInfo, int], object]) -> None:
        self.reactor = reactor
        self.path = path
        self.write = write
        self.offset = offset
        self.length = length
        self.stale = stale
        self.on_start = on_start
        self.info: FileInfo | None = None
        self.pos = offset
        self.stop: int | None = None
        self.hasher: Any = None
        self._starts: list[int] = []
        self._writing: defer.Deferred | None = None
        """The caller's last ``write`` still pending: a resumed attempt waits for it first."""
        self._pump: defer.Deferred | None = None
        """The last attempt's pump (delivering the frames it received): a resumed attempt waits for it."""

    async def attempt(self, conn: RequestConnection, deadline: Deadline) -> FileInfo:
        # The last attempt's pump may still be hashing or handing on a piece it had received
        # whole: once it settles, ``pos`` says what the caller has, and the resumed get asks
        # for the bytes after it (not those again).
        if self._pump is not None and not self._pump.called:
            await defer.DeferredList([self._pump], consumeErrors=True)
        if self._writing is not None and not self._writing.called:
            await defer.DeferredList([self._writing], consumeErrors=True)
        remaining = WHOLE if self.stop is None else self.stop - self.pos
        if self.info is not None and remaining == 0:
            await self._check_end()  # every byte arrived before GetEnd did: check the whole file now
            return self.info
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        queue: deque[Any] = deque()
        box: list[Stream] = []
        pump: list[defer.Deferred | None] = [None]
        paused = [False]

        def on_frame(frame: Any) -> bool:
            deadline.extend()
            watchdog.reset(deadline.timeout)
            if isinstance(frame, (GetStart, GetData, GetEnd)):
                queue.append(frame)
                if len(queue) > 2 and not paused[0]:
                    paused[0] = True
                    conn.pause_reading()
                if pump[0] is None or pump[0].called:  # (a drain may have ended synchronously)
                    pump[0] = self._pump = defer.Deferred.fromCoroutine(self._drain(queue, paused, conn, box, pump))
                return False  # the end is decided by the pump, once everything is delivered
            raise ProtocolViolation(f"unexpected {type(frame).__name__} during a get")

        length = remaining if self.stop is not None else (WHOLE if self.length is None else self.length)
        stream = conn.request_stream(lambda rid: GetRequest(rid, self.path, self.stale, self.pos, length),
                                     on_frame)
        box.append(stream)
        try:
            result = await stream.done
            return result
        finally:
            watchdog.cancel()
            if paused[0]:
                paused[0] = False
                conn.resume_reading()
            if not stream.finished:
                stream.abort(ProtocolViolation("get abandoned"))
            consume(stream.done)

    async def _drain(self, queue: deque, paused: list[bool], conn: RequestConnection, box: list[Stream],
                     pump: list) -> None:
        stream = box[0]
        try:
            while queue and not stream.finished:
                frame = queue.popleft()
                if paused[0] and len(queue) <= 1:
                    paused[0] = False
                    conn.resume_reading()
                if isinstance(frame, GetStart):
                    self._started(frame)
                elif isinstance(frame, GetData):
                    if self.info is None:
                        raise ProtocolViolation("GetData before GetStart")
                    await self._deliver(bytes(frame.data))
                else:
                    await self._check_end()
                    assert self.info is not None
                    if not stream.finished:
                        conn._forget(stream)
                        stream.done.callback(self.info)
        except Exception as exc:
            if not stream.finished:
                stream.abort(exc)

    async def _check_end(self) -> None:
        """Every byte asked for was handed on, and a whole file hashes to its SHA-256 (or composite)."""
        if self.pos != self.stop:
            raise IntegrityError(f"{self.path}: the get ended at byte {self.pos}, not {self.stop}")
        if self.hasher is not None:
            # A plain SHA-256 has nothing left to hash; a composite one hashes its part digests
            # (up to 4 MiB of them for the most parts a file may have), so that goes to a thread.
            composite = isinstance(self.hasher, PartsHasher)
            digest = await (in_thread(self.reactor, self.hasher.hexdigest) if composite
                            else defer.succeed(self.hasher.hexdigest()))
            assert self.info is not None
            if digest != self.info.sha256:
                raise IntegrityError(f"{self.path}: SHA-256 mismatch (got {digest}, expected {self.info.sha256})")

    def _started(self, frame: GetStart) -> None:
        info = frame.info
        if self.info is None:
            if self.offset > info.size:
                raise BadRequest(f"offset {self.offset} is past the end of {self.path} ({info.size} bytes)")
            self.stop = info.size if self.length is None else min(info.size, self.offset + self.length)
            self.info = info
            self._starts = [0]
            for ref in info.chunks:
                self._starts.append(self._starts[-1] + ref.size)
            if self.offset == 0 and self.stop == info.size:
                self.hasher = content_hasher(info)
            self.on_start(info, frame.index)
        elif (info.version, info.sha256) != (self.info.version, self.info.sha256):
            raise IntegrityError(f"{self.path} changed while it was being read (version {self.info.version} "
                                 f"is now {info.version}): start again")

    async def _deliver(self, data: bytes) -> None:
        assert self.info is not None and self.stop is not None
        if self.pos + len(data) > self.stop:
            raise IntegrityError(f"{self.path}: received more than the {self.stop - self.offset} bytes asked")
        if self.hasher is not None:
            await hash_off_reactor(self.reactor, self.hasher.update, data)
        else:
            ref = self._whole_chunk_at(self.pos, len(data))
            if ref is not None:
                digest = await hash_off_reactor(self.reactor, _sha256, data)
                if digest != ref:
                    raise IntegrityError(f"{self.path}: chunk {ref[:12]} at byte {self.pos} does not match its digest")
        self.pos += len(data)
        # The caller's failure ends the get (LocalError is never retried on another node).
        try:
            result = self.write(data)
            if isinstance(result, defer.Deferred):
                self._writing = result
                await result
        except Exception as exc:
            raise LocalError(f"the receiver of {self.path} failed: {exc}") from exc

    def _whole_chunk_at(self, pos: int, size: int) -> str | None:
        """The hash of the chunk that bytes [pos, pos + size) are exactly, if they are one."""
        assert self.info is not None
        i = bisect.bisect_left(self._starts, pos)
        if i >= len(self.info.chunks) or self._starts[i] != pos:
            return None
        ref = self.info.chunks[i]
        return ref.hash if ref.size == size else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
