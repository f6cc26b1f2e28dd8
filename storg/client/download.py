"""One attempt of a get: write and hash the GetData frames off the reactor, memory bounded.

:class:`AtomicFile` (a get never leaves a partial local file) is in
:mod:`storg.client.localfile` and imported here for its old callers.

See :mod:`storg.client.transfer` for the whole picture of a transfer."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.python.failure import Failure

from storg.client import localfile
from storg.client.errors import (
    ClusterUnavailable,
    LocalError,
    ProtocolViolation,
)
from storg.client.localfile import AtomicFile, DownloadSink
from storg.client.transfer import (
    Deadline,
    Progress,
    Watchdog,
    consume,
    in_thread,
    no_progress,
)
from storg.net.connection import RequestConnection, Stream
from storg.net.protocol import GetCheck, GetStream
from storg.wire.files import (
    FileInfo,
    GetRequest,
)

__all__ = ["AtomicFile", "Download", "DownloadSink"]

SINK_HIGH_WATER = 4 * 1024 * 1024
"""Bytes received but not yet written before a get stops reading its connection."""

SINK_LOW_WATER = 1 * 1024 * 1024
"""Reading resumes once the writer is back under this many bytes."""


def _hash_all(hasher: Any, pieces: list) -> None:
    for data in pieces:
        hasher.update(data)


def _first_failure(failure: Failure) -> Failure:
    """gatherResults(consumeErrors=True) fails with a FirstError: the Failure inside it."""
    return cast(defer.FirstError, failure.value).subFailure


class _SinkWriter:
    """One writer thread at a time per get, in order; reading pauses when it falls behind."""

    def __init__(self, reactor: Any, conn: RequestConnection, sink: DownloadSink,
                 on_written: Callable[[int], None], on_error: Callable[[Exception], None]) -> None:
        self.reactor = reactor
        self.conn = conn
        self.sink = sink
        self.hasher: Any = hashlib.sha256()
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
        written = in_thread(self.reactor, self.sink.write_many, batch)
        hashed = in_thread(self.reactor, _hash_all, self.hasher, batch)
        both = defer.gatherResults([written, hashed], consumeErrors=True)
        both.addErrback(_first_failure)
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
        if self.sink.sync and self._syncing is None and self.written - self._synced >= localfile.SYNC_EVERY:
            self._synced = self.written
            self._syncing = in_thread(self.reactor, self.sink.sync_now)
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
        self.progress = progress or no_progress

    async def attempt(self, conn: RequestConnection, deadline: Deadline) -> FileInfo:
        if not self.sink.can_restart():
            raise ClusterUnavailable("the node was lost after part of the file was written out")
        self.sink.restart()
        watchdog = Watchdog(self.reactor, conn, deadline.remaining())
        # Which frames may come, and the size and SHA-256 checks: the client protocol's.
        check = GetCheck(self.path)
        rules = GetStream(check)
        stream_box: list[Stream] = []

        def moved(written: int) -> None:
            deadline.extend()
            watchdog.reset(deadline.timeout)
            self.progress(written, check.info.size if check.info else None)

        def write_failed(exc: Exception) -> None:
            if stream_box:
                stream_box[0].abort(exc)

        writer = _SinkWriter(self.reactor, conn, self.sink, moved, write_failed)
        writer.hasher = check.hasher

        def on_frame(frame: Any) -> bool:
            kind = rules.frame(frame)  # ProtocolViolation or IntegrityError for a frame out of place
            if kind == "end":
                return True
            if kind == "data":
                writer.write(frame.data)
            else:
                writer.hasher = check.hasher  # chosen by the file's kind at its start (a composite's part by part)
                self.progress(0, frame.info.size)
            deadline.extend()
            watchdog.reset(deadline.timeout)
            return False

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
                await in_thread(self.reactor, self.sink.flush)
            return check.finish(writer.written)
        finally:
            watchdog.cancel()
            consume(stream.done)
            if not stream.finished:
                stream.abort(ProtocolViolation("get abandoned"))
            writer.stop()
            await writer.drain()
