"""File transfers of the client library: one attempt of a put or a get on one connection.

This module holds what both directions share (deadlines, the watchdog,
the piece size); the put is :mod:`storg.client.upload`, the get
:mod:`storg.client.download`.

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
  the background every :data:`~storg.client.localfile.SYNC_EVERY` bytes, so the final fsync does
  not find a gigabyte still to write;
* an in-memory source or sink (``io.BytesIO``) is read or written on the
  reactor thread: it cannot block, and a thread hop per frame would cost
  more than the copy.

A stalled node is not waited on forever: every attempt has a watchdog that
drops the connection after ``timeout`` seconds without progress, while a
transfer that keeps moving is never cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg.net import protocol
from storg.net.connection import RequestConnection
from storg.node.executor import reactor_pool
from storg.wire import MAX_FRAME_BYTES

Progress = Callable[[int, "int | None"], None]
"""``progress(bytes_done, total_or_None)``; called on the reactor thread."""

MAX_PIECE = MAX_FRAME_BYTES - 1024
"""Never trust a server's max_frame beyond what one frame can carry."""

SMALL_PUT = protocol.SMALL_PUT
"""Sources up to this size may be put in one round trip: see :func:`storg.net.protocol.small_put_limit`."""


def no_progress(done: int, total: int | None) -> None:
    pass


class Deadline(protocol.Deadline):
    """The client protocol's :class:`~storg.net.protocol.Deadline` on a reactor's clock."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        super().__init__(reactor.seconds, timeout)


class Watchdog:
    """Drops a connection after a quiet spell: a node that stops answering mid-transfer."""

    def __init__(self, reactor: Any, conn: RequestConnection, delay: float) -> None:
        self.reactor = reactor
        self.conn = conn
        self._call = reactor.callLater(max(delay, 0.0), self._fire)

    def _fire(self) -> None:
        self.conn.abort()

    def reset(self, delay: float) -> None:
        if self._call.active():
            self._call.reset(delay)

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


def in_thread(reactor: Any, f: Callable[..., Any], *args: Any) -> defer.Deferred:
    return reactor_pool(reactor)(f, *args)


INLINE_HASH_BYTES = 64 * 1024
"""Data up to this size is hashed on the reactor thread: about 45 us of SHA-256 at 1.4 GB/s,
far less than the hand-off to a pool thread and back (and its GIL switches) would cost."""


def hash_off_reactor(reactor: Any, f: Callable[[bytes], Any], data: bytes) -> defer.Deferred:
    """``f(data)`` (a hash update or digest): in a pool thread for large data, at once for small."""
    if len(data) <= INLINE_HASH_BYTES:
        return defer.maybeDeferred(f, data)
    return in_thread(reactor, f, data)


def consume(d: defer.Deferred) -> None:
    """Mark a Deferred's failure as seen (we already acted on it another way)."""
    d.addErrback(lambda _: None)


# --- put -----------------------------------------------------------------------
