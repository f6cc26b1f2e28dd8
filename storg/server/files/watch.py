"""``watch``: every change under a prefix in commit order, served by any node from a ring of applied changes.

The state machine reports the namespace changes of each entry as it
applies it (:attr:`~storg.fsm.machine.FileStoreStateMachine.on_entry`);
this node keeps them in a bounded in-memory ring, newest last.  A
``WatchRequest`` for index ``start`` is answered with a progress mark
(``kind`` 0, ``index`` = ``start - 1``: "you are here"), then the ring's
changes of entries from ``start`` on, then each new entry's changes as it
applies, for as long as the connection lasts.  Every node applies the same
entries into the same state, so every node produces the same events for an
index, in the same order: a client that loses its node (a leader killed,
say) resumes on another from the index of its last event, skipping the
events of that index it already has, and misses or repeats nothing.

The ring holds the changes of the entries applied since this node started
(or installed its last snapshot), up to ``capacity`` changes; a ``start``
older than that is refused with COMPACTED, as etcd's ErrCompacted: the
client lists the prefix (the state now) and watches from the index the
error names.  A snapshot install (a follower far behind) empties the ring
and ends every watch on this node with COMPACTED, since the changes it
skipped are not known here.

Why a ring and not the Raft log: an entry alone does not say what it
changed (a folder move names a prefix, not its files), so replaying the log
would need the namespace as it was at each entry; the ring keeps what apply
already computed, and costs memory only while watchers or recent changes
exist.  Events go out as they are produced, on the reactor; a watcher that
stops reading is dropped (LIMIT_EXCEEDED, naming the index to resume from)
once ``max_behind`` events were queued for it while its connection's buffer
was full, so one slow client cannot make the node hold an unbounded backlog.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from storg.fsm.state import Change
from storg.node.raft_node import RaftNode
from storg.paths import ROOT, InvalidPath, normalize_prefix
from storg.server.client_port import ClientConnection, RequestError
from storg.wire import ErrorCode, ErrorReply
from storg.wire.tree import WatchEvent, WatchRequest

RING_CHANGES = 200_000
"""Changes the ring holds at most (a few tens of MB): a 100,000-file mv fits twice."""

MARK_INTERVAL = 2.0
"""Seconds between progress marks to every watcher: a keepalive (a client that hears nothing for
a few of them takes its node for lost and resumes elsewhere) and a resume point past quiet spells."""

MAX_WATCHERS = 1000
"""Watches one node serves at once: each costs a filter per change applied."""

MAX_BEHIND = 100_000
"""Events queued for a watcher while its connection's buffer is full, past which it is dropped."""


class _Watcher:
    def __init__(self, hub: WatchHub, conn: ClientConnection, request_id: int, prefix: str) -> None:
        self.hub = hub
        self.conn = conn
        self.request_id = request_id
        self.prefix = prefix
        self.below = prefix + "/"
        self.done: defer.Deferred[None] = defer.Deferred()
        self.behind = 0

    def matches(self, change: Change) -> bool:
        if self.prefix == ROOT:
            return True
        return any(p == self.prefix or p.startswith(self.below) for p in (change.path, change.src) if p)

    def deliver(self, index: int, changes: list[Change]) -> None:
        conn, rid = self.conn, self.request_id
        sent = 0
        for change in changes:
            if self.matches(change):
                conn.send(WatchEvent(rid, index, change.kind, change.path, change.src, change.size,
                                     change.sha256.hex()))
                sent += 1
        self.behind = self.behind + sent if conn.backed_up else 0
        if self.behind > self.hub.max_behind:
            self.end(ErrorCode.LIMIT_EXCEEDED, f"the watch fell {self.behind} events behind; "
                                               f"watch again --from {index + 1}")

    def end(self, code: ErrorCode, message: str) -> None:
        self.hub.watchers.discard(self)
        self.conn.send(ErrorReply(self.request_id, int(code), message))
        if not self.done.called:
            self.done.callback(None)


class WatchHub:
    """The ring of recent changes and the watchers of this node."""

    def __init__(self, node: RaftNode, fsm: Any, *, capacity: int = RING_CHANGES,
                 max_behind: int = MAX_BEHIND, reactor: Any = None,
                 mark_interval: float = MARK_INTERVAL) -> None:
        self.node = node
        self.reactor = reactor
        self.mark_interval = mark_interval
        self._marks: LoopingCall | None = None
        self.capacity = capacity
        self.max_behind = max_behind
        self.ring: deque[tuple[int, list[Change]]] = deque()
        self.held = 0
        # Every entry applied from now on that changes the namespace goes
        # through the state machine's apply (a leader's empty no-op does not).
        self.oldest: int | None = node.applied_index + 1
        """The first index whose changes are all in the ring (None: not known until the next entry)."""
        self.last = 0
        self.watchers: set[_Watcher] = set()
        fsm.on_entry = self.entry
        fsm.on_install = self.reset

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {WatchRequest: self.watch}

    def start(self) -> None:
        if self.reactor is None:
            return
        self._marks = LoopingCall(self.mark)
        self._marks.clock = self.reactor
        self._marks.start(self.mark_interval, now=False)

    def stop(self) -> None:
        if self._marks is not None and self._marks.running:
            self._marks.stop()

    def mark(self) -> None:
        """Tell every watcher that everything up to the applied index has been sent to it.

        True by construction: changes are sent in the apply that makes them,
        on this same thread, so by now every applied entry's are out.
        """
        index = self.applied()
        for watcher in list(self.watchers):
            watcher.conn.send(WatchEvent(watcher.request_id, index, 0, ""))

    # -- fed by the state machine ------------------------------------------------------

    def entry(self, index: int, changes: list[Change]) -> None:
        if self.oldest is None:  # the first entry after a snapshot install
            self.oldest = min(index, self.node.applied_index + 1)
        self.last = index
        if not changes:
            return
        self.ring.append((index, changes))
        self.held += len(changes)
        while self.held > self.capacity and len(self.ring) > 1:
            gone, dropped = self.ring.popleft()
            self.held -= len(dropped)
            self.oldest = gone + 1
        for watcher in list(self.watchers):
            watcher.deliver(index, changes)

    def reset(self) -> None:
        """A snapshot replaced the state: the changes it skipped are not known here."""
        self.ring.clear()
        self.held = 0
        self.oldest = None
        for watcher in list(self.watchers):
            watcher.end(ErrorCode.COMPACTED, f"{self.node.node_id} installed a snapshot; "
                                             f"list the prefix again and watch from the index after it")

    def applied(self) -> int:
        return max(self.last, self.node.applied_index)

    def first_held(self) -> int:
        return self.applied() + 1 if self.oldest is None else self.oldest

    # -- the request -------------------------------------------------------------------

    def watch(self, req: WatchRequest, conn: ClientConnection) -> defer.Deferred[None]:
        try:
            prefix = normalize_prefix(req.prefix)
        except InvalidPath as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"invalid prefix: {exc}") from None
        if len(self.watchers) >= MAX_WATCHERS:
            # UNAVAILABLE, not LIMIT_EXCEEDED: the client moves on to another node by itself.
            raise RequestError(ErrorCode.UNAVAILABLE,
                               f"{self.node.node_id} serves {MAX_WATCHERS} watches already; try another node")
        start = req.start or self.applied() + 1
        first = self.first_held()
        if start < first:
            raise RequestError(ErrorCode.COMPACTED, (
                f"index {start} is compacted away: {self.node.node_id} holds the changes from index "
                f"{first} on; list {prefix} for the state now and watch --from {self.applied() + 1}"))
        watcher = _Watcher(self, conn, req.request_id, prefix)
        conn.send(WatchEvent(req.request_id, start - 1, 0, ""))
        for index, changes in self.ring:
            if index >= start:
                watcher.deliver(index, changes)
        self.watchers.add(watcher)

        def gone() -> None:
            self.watchers.discard(watcher)
            if not watcher.done.called:
                watcher.done.callback(None)

        conn.on_close(gone)
        # Never answered with a final reply: events flow until the connection or the watch ends.
        return watcher.done.addCallback(lambda _: None)

