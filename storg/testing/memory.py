"""In-memory stand-ins for tests that drive nodes in one reactor.

Like ``twisted.internet.testing``: real objects with the same contracts as
the disk and network ones, but nothing touches a disk or a socket, so a test
can run several nodes on one ``task.Clock`` and decide exactly when each
message arrives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from storg.raft.types import (
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    PersistedState,
    SnapshotMeta,
)


class MemoryLogStore:
    """A LogStore that keeps its "durable" state in memory.

    ``load()`` returns what was persisted, so a test can crash a node (drop
    the RaftNode) and start a new one from the same store.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = SnapshotMeta()
        self.entries: list[Entry] = []

    def load(self) -> PersistedState:
        return PersistedState(self.hard_state, self.snapshot, list(self.entries))

    def persist(self, snapshot: SnapshotMeta | None, entries: Sequence[Entry],
                hard_state: HardState | None) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = [e for e in self.entries if e.index > snapshot.index]
        if entries:
            first = entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def compact(self, index: int) -> None:
        self.entries = [e for e in self.entries if e.index > index]


class ListStateMachine:
    """Applies NORMAL entries by appending their data; answers with the index."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.conf_changes: list[ConfChange] = []

    def apply(self, entry: Entry) -> Any:
        if entry.type == EntryType.CONF_CHANGE:
            self.conf_changes.append(ConfChange.decode(entry.data))
            return None
        self.applied.append(entry.data)
        return entry.index

    def snapshot(self) -> list[bytes]:
        return copy.copy(self.applied)


class MemoryNetwork:
    """Delivers messages between nodes through the clock, one call later.

    Delivery is deferred (``callLater(0)``) so one node's send never re-enters
    another node's Ready loop; ``cut`` drops messages between two nodes.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.receivers: dict[str, Callable[[Message], object]] = {}
        self.cut_links: set[frozenset[str]] = set()
        self.down: set[str] = set()
        self.sent: list[Message] = []

    def attach(self, node_id: str, receive: Callable[[Message], object]) -> Callable[[Message], None]:
        self.receivers[node_id] = receive

        def send(msg: Message) -> None:
            self.sent.append(msg)
            if frozenset((msg.frm, msg.to)) in self.cut_links:
                return
            self.clock.callLater(0, self._deliver, msg)

        return send

    def _deliver(self, msg: Message) -> None:
        if msg.to in self.down or msg.frm in self.down:
            return
        if frozenset((msg.frm, msg.to)) in self.cut_links:
            return
        receive = self.receivers.get(msg.to)
        if receive is not None:
            receive(msg)

    def isolate(self, node_id: str) -> None:
        for other in self.receivers:
            if other != node_id:
                self.cut_links.add(frozenset((node_id, other)))

    def heal(self) -> None:
        self.cut_links.clear()
