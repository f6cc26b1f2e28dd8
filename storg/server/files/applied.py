"""Waiting until this node has applied its log up to an index.

A chunk sent by the leader after a collect must not be written before the
collect's delete has run here (see :mod:`storg.server.files.service`, the
collect barrier); repair waits the same way before recording new holders.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from storg.node.raft_node import RaftNode

APPLY_WAIT = 10.0
"""Seconds a node waits to catch up to a ChunkPutAfter's index before refusing the chunk."""


class AppliedWaiter:
    """Deferreds that fire once this node has applied the log up to an index."""

    def __init__(self, node: RaftNode, reactor: Any, poll: float = 0.05) -> None:
        self.node = node
        self.reactor = reactor
        self.poll = poll
        self._waiting: list[tuple[int, defer.Deferred]] = []
        self._call: Any = None
        node.on_applied(self._check)

    def wait(self, index: int, timeout: float = APPLY_WAIT) -> defer.Deferred:
        """Fires with the applied index, or fails with defer.TimeoutError after ``timeout``."""
        if self.node.applied_index >= index:
            return defer.succeed(self.node.applied_index)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((index, d))
        d.addTimeout(timeout, self.reactor)
        self._schedule()
        return d

    def _schedule(self) -> None:
        # A snapshot install moves the applied index without an on_applied call: poll too.
        if self._waiting and (self._call is None or not self._call.active()):
            self._call = self.reactor.callLater(self.poll, self._check)

    def _check(self, _applied: Any = None) -> None:
        applied = self.node.applied_index
        waiting, self._waiting = self._waiting, []
        for index, d in waiting:
            if d.called:
                continue
            if applied >= index:
                d.callback(applied)
            else:
                self._waiting.append((index, d))
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
