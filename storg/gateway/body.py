"""One request body on its way to the cluster: decoded, checked, passed on at the sink's pace.

A :class:`BodyPump` sits between :class:`~storg.gateway.request.StreamingRequest`
(raw bytes off the socket) and a sink (a :class:`~storg.client.api.PutStream`'s
``write``, whose Deferred fires when it may be written again).  Each raw
piece is decoded (aws-chunked framing, when the request uses it), every
decoded piece is shown to the observers (the MD5 of Content-MD5, the
checksum the client named, the SHA-256 a signed payload promises), and
handed to the sink one at a time.  While the sink is busy the request's
transport is paused; whatever one socket read still brings is queued, so
the queue never holds more than a read or two.

A failure (a malformed chunk, the cluster gone) does not cut the
connection: the rest of the body is read and dropped, and the exchange
answers with the error once the client has sent everything, as HTTP/1.1
clients expect.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure


class Observer(Protocol):
    def update(self, data: bytes) -> None: ...


class Flow(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


Sink = Callable[[bytes], "defer.Deferred[Any] | None"]


class BodyPump:
    """Raw body pieces in (:meth:`feed`), decoded pieces out to ``sink``; :meth:`end` when done.

    ``decode(raw) -> [pieces]`` and ``finish() -> trailers`` are the
    framing (identity by default); ``observers`` see every decoded piece
    before the sink does.  :meth:`wait` fires with the trailers once the
    last piece has been accepted by the sink, or fails with the first error.
    """

    def __init__(self, flow: Flow, sink: Sink, *, decode: Callable[[bytes], list[bytes]] | None = None,
                 finish: Callable[[], dict[str, str]] | None = None,
                 observers: tuple[Observer, ...] = ()) -> None:
        self.flow = flow
        self.sink = sink
        self.decode = decode or (lambda raw: [raw] if raw else [])
        self.finish = finish or dict
        self.observers = observers
        self.pending: deque[bytes] = deque()
        self.busy = False
        self.failure: Failure | None = None
        self.ended = False
        self.trailers: dict[str, str] = {}
        self.bytes = 0
        """Decoded bytes seen so far."""
        self.done = False
        self._outcome: dict[str, str] | Failure | None = None
        self._waiters: list[defer.Deferred[dict[str, str]]] = []

    def wait(self) -> defer.Deferred[dict[str, str]]:
        """A Deferred of the outcome (each caller its own: one nobody waits for is no unhandled error)."""
        d: defer.Deferred[dict[str, str]] = defer.Deferred()
        if self._outcome is None:
            self._waiters.append(d)
        elif isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        else:
            d.callback(self._outcome)
        return d

    def _settle(self, outcome: dict[str, str] | Failure) -> None:
        if self.done:
            return
        self.done = True
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def feed(self, raw: bytes) -> None:
        if self.failure is not None or self.done:
            return  # read and dropped: the answer is the error, once the client has sent it all
        try:
            pieces = self.decode(raw)
        except Exception:
            self.fail(Failure())
            return
        for piece in pieces:
            self.bytes += len(piece)
            for observer in self.observers:
                observer.update(piece)
        self.pending.extend(pieces)
        self._pump()

    def end(self) -> defer.Deferred[dict[str, str]]:
        """The raw body is complete; returns :meth:`wait`."""
        if self.failure is None and not self.ended:
            self.ended = True
            try:
                self.trailers = self.finish()
            except Exception:
                self.fail(Failure())
                return self.wait()
            self._pump()
        return self.wait()

    def fail(self, failure: Failure) -> None:
        """Stop passing pieces on; the rest of the body is dropped and ``done`` fails."""
        if self.failure is not None:
            return
        self.failure = failure
        self.pending.clear()
        self.flow.resume()  # read (and drop) the rest, so the answer can follow it
        self._settle(failure)

    def _pump(self) -> None:
        while self.pending and not self.busy and self.failure is None:
            piece = self.pending.popleft()
            try:
                d = self.sink(piece)
            except Exception:
                self.fail(Failure())
                return
            if d is not None and not d.called:
                self.busy = True
                self.flow.pause()
                d.addCallbacks(self._drained, self.fail)
                return
            if d is not None:
                d.addErrback(self.fail)
        if not self.pending and not self.busy:
            self.flow.resume()
            if self.ended and self.failure is None:
                self._settle(self.trailers)

    def _drained(self, _: object) -> None:
        self.busy = False
        self._pump()


COALESCE = 1024 * 1024
"""Bytes gathered before one write to the cluster upload (a chunk's worth by default)."""


class Coalescer:
    """Gathers small body pieces (a TLS record is 16 KiB) into writes of about ``size`` bytes.

    Each write to a cluster upload costs a frame, a hash step in a thread
    and a Deferred; at 16 KiB a piece the upload spends its time on that
    overhead and its hash queue grows.  Holds at most ``size`` bytes plus one
    piece; :meth:`flush` writes the rest (before the upload's ``finish``).
    """

    def __init__(self, target: Sink, size: int = COALESCE) -> None:
        self.target = target
        self.size = size
        self.parts: list[bytes] = []
        self.held = 0

    def write(self, data: bytes) -> defer.Deferred[Any] | None:
        self.parts.append(data)
        self.held += len(data)
        if self.held < self.size:
            return None
        return self.flush()

    def flush(self) -> defer.Deferred[Any] | None:
        if not self.parts:
            return None
        data = b"".join(self.parts)
        self.parts = []
        self.held = 0
        return self.target(data)
