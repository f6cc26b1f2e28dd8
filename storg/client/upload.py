"""One attempt of a put: read the source in pieces off the reactor, hash, send as the socket drains.

See :mod:`storg.client.transfer` for the whole picture of a transfer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg import tracing
from storg.client.errors import (
    ClusterUnavailable,
    LocalError,
    ProtocolViolation,
)
from storg.client.localfile import LocalSource
from storg.client.transfer import (
    MAX_PIECE,
    Deadline,
    Progress,
    Watchdog,
    consume,
    in_thread,
    no_progress,
)
from storg.net.connection import RequestConnection, Stream
from storg.net.protocol import PutStream as PutRules
from storg.net.protocol import small_put_limit
from storg.wire.files import (
    FileInfo,
    PutData,
    PutEnd,
    PutReady,
    PutStart,
)
from storg.wire.objects import NO_ATTRS, ObjectAttrs, PutAbort, PutEndObject, PutStartObject
from storg.wire.tree import PutStartIf


class UploadSource(LocalSource):
    """A :class:`~storg.client.localfile.LocalSource` read off the reactor thread."""

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
            return defer.maybeDeferred(self.read_whole, limit)
        self.consumed = True
        return in_thread(reactor, self.read_whole, limit)

    def read_piece(self, reactor: Any, size: int, hasher: Any) -> defer.Deferred:
        """Read up to ``size`` bytes (fewer only at the end) and hash them, off the reactor thread."""
        self.consumed = True
        if self.in_memory:
            return defer.maybeDeferred(self.read_and_hash, size, hasher)
        return in_thread(reactor, self.read_and_hash, size, hasher)


async def open_put(conn: RequestConnection, deadline: Deadline, make: Callable[[int], Any],
                   ) -> tuple[RequestConnection, Stream, int]:
    """Send a put's start frame and wait for PutReady: (connection, stream, max_frame).

    The stream then takes PutData and PutEnd and ends with PutDone.  Both
    :class:`Upload` and :class:`~storg.client.streams.PutStream` begin so.
    """
    ready: defer.Deferred = defer.Deferred()
    rules = PutRules()  # which frames may come, and PutReady's checks: the client protocol's

    def on_frame(frame: Any) -> bool:
        if rules.frame(frame):
            return True
        ready.callback(frame)  # a PutReady: the only other frame the rules let through
        return False

    stream = conn.request_stream(make, on_frame)

    def failed(failure: Any) -> Any:
        if not ready.called:
            ready.errback(failure)
        return failure

    stream.done.addErrback(failed)
    try:
        frame = await ready
    except BaseException:
        if not stream.finished:
            stream.abort(ProtocolViolation("put abandoned"))
        consume(stream.done)
        raise
    return conn, stream, frame.max_frame


def start_frame(request_id: int, path: str, client_id: int, seq: int, *, if_absent: bool = False,
                if_match: str = "", attrs: ObjectAttrs | None = None,
                if_match_etag: str = "") -> PutStart | PutStartIf | PutStartObject:
    """A put's first frame: the conditions the state machine checks at apply, and the attributes.

    The plainest frame that says it all, so a put without attributes costs what it did.
    """
    if attrs is not None or if_match_etag:
        return PutStartObject(request_id, path, client_id, seq, if_absent, if_match, if_match_etag,
                              attrs if attrs is not None else NO_ATTRS)
    if if_absent or if_match:
        return PutStartIf(request_id, path, client_id, seq, if_absent, if_match)
    return PutStart(request_id, path, client_id, seq)


def end_frame(request_id: int, size: int, sha256: str, attrs: ObjectAttrs | None = None) -> PutEnd | PutEndObject:
    """A put's last frame: what was sent (size, SHA-256) and, if given, the put's final attributes.

    ``attrs`` replace the start's in the put's entry (a checksum known only
    after the body, from an aws-chunked trailer); None keeps the start's.
    """
    if attrs is None:
        return PutEnd(request_id, size, sha256)
    return PutEndObject(request_id, size, sha256, attrs)


class Upload:
    """One put, retried as a whole (same ``client_id`` and ``seq``) by the caller's loop."""

    def __init__(self, reactor: Any, source: UploadSource, path: str, client_id: int, seq: int,
                 progress: Progress | None = None, *, if_absent: bool = False, if_match: str = "",
                 attrs: ObjectAttrs | None = None, if_match_etag: str = "") -> None:
        self.reactor = reactor
        self.if_absent = if_absent
        self.if_match = if_match
        self.attrs = attrs
        self.if_match_etag = if_match_etag
        self.source = source
        self.path = path
        self.client_id = client_id
        self.seq = seq
        self.progress = progress or no_progress
        self.interrupted = ""

    def _start(self, request_id: int) -> PutStart | PutStartIf | PutStartObject:
        return start_frame(request_id, self.path, self.client_id, self.seq, if_absent=self.if_absent,
                           if_match=self.if_match, attrs=self.attrs, if_match_etag=self.if_match_etag)

    async def attempt(self, conn: RequestConnection, deadline: Deadline) -> FileInfo:
        if not self.source.can_restart():
            raise ClusterUnavailable(
                f"the upload was interrupted ({self.interrupted or 'leader changed'}) "
                "and its source cannot be read again")
        self.source.rewind()
        small = None
        small = await self.source.read_small(self.reactor, small_put_limit(conn.max_frame))
        if small is not None:
            return await self._attempt_small(conn, deadline, small)
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        pending: defer.Deferred | None = None
        stream: Stream | None = None
        try:
            _, stream, max_frame = await open_put(conn, deadline, self._start)
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
            # The server holds half an upload under this request id: PutAbort makes it let go
            # (the connection goes on serving this client's other requests).
            if stream is not None and not stream.finished:
                stream.send(PutAbort(stream.request_id))
            raise
        except Exception as exc:
            self.interrupted = str(exc) or type(exc).__name__
            raise
        finally:
            watchdog.cancel()
            if stream is not None:
                consume(stream.done)
                if not stream.finished:
                    stream.abort(ProtocolViolation("put abandoned"))
            if pending is not None:
                consume(pending)
                if self.source.seekable:
                    # A read still running in a thread must end before a retry seeks.
                    await defer.DeferredList([pending], consumeErrors=True)

    async def _attempt_small(self, conn: RequestConnection, deadline: Deadline, data: bytes) -> FileInfo:
        """The whole put in one round trip: PutStart, PutData, PutEnd without waiting for PutReady.

        A node that reads all three at once answers PutDone alone; one that
        reads them apart sends PutReady first.
        """
        # A node may skip PutReady when the PutEnd came with the PutStart; one it sends
        # must allow the bytes already sent (the client protocol's rules).
        rules = PutRules(small_size=len(data))

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, PutReady):
                conn.max_frame = frame.max_frame
            return rules.frame(frame)

        digest = hashlib.sha256(data).hexdigest()
        self.progress(0, len(data))
        if tracing.ON:
            tracing.mark("client.put", f"{self.path} bytes={len(data)}")

        def then(request_id: int) -> list[Any]:
            end = PutEnd(request_id, len(data), digest)
            return [PutData(request_id, data), end] if data else [end]

        stream = conn.request_stream(self._start, on_frame, then)
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        try:
            reply = await stream.done
            if tracing.ON:
                tracing.mark("client.put_done", self.path)
            deadline.extend()
            self.progress(len(data), len(data))
            return reply.info
        except Exception as exc:
            self.interrupted = str(exc) or type(exc).__name__
            raise
        finally:
            watchdog.cancel()
            consume(stream.done)
            if not stream.finished:
                stream.abort(ProtocolViolation("put abandoned"))


# --- get -----------------------------------------------------------------------
