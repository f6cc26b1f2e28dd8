"""The one flow-control window: a transport's write buffer, seen as pause and resume.

Twisted tells a streaming producer registered on a transport when the
transport's write buffer passes its ``bufferSize`` (``pauseProducing``) and
when it has drained (``resumeProducing``).  Every connection storg writes
on registers a :class:`WriteWindow` for that signal and nothing else; what
the writer does with it differs, so the window offers each way once:

* wait for room: :meth:`WriteWindow.wait` fires when the buffer drains
  (the client port's handlers before each reply frame of a get or an ls);
* be called back: ``on_resume`` (the request connection wakes its writers,
  which it fails or cancels one by one, so it keeps its own list);
* admit or drop: :meth:`WriteWindow.admit` bounds the bytes queued while
  paused (the peer transport: Raft tolerates a dropped message, a node
  does not tolerate unbounded memory for a peer that stopped reading).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class WriteWindow:
    """Registered on a transport as a streaming producer, to learn when its buffer is full."""

    def __init__(self, limit: int = 0, on_resume: Callable[[], object] | None = None) -> None:
        self.limit = limit
        """Bytes :meth:`admit` lets through while paused."""
        self.paused = False
        self.stopped = False
        self.queued_while_paused = 0
        self.dropping = False
        """Set by a writer that started dropping, so it logs once per pause."""
        self._on_resume = on_resume
        self._waiters: list[defer.Deferred[None]] = []

    def admit(self, size: int) -> bool:
        """Whether ``size`` more bytes may be queued now (always while not paused)."""
        if not self.paused:
            return True
        if self.queued_while_paused + size > self.limit:
            return False
        self.queued_while_paused += size
        return True

    def wait(self) -> defer.Deferred[None]:
        """Fires once the buffer has room: at once unless paused (or after the transport stopped)."""
        if not self.paused or self.stopped:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued_while_paused = 0
        self.dropping = False
        self._release()
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self) -> None:
        """The connection is gone: nothing more will drain; waiters go on (and find it closed)."""
        self.stopped = True
        self.paused = True
        self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
