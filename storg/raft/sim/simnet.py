"""A seeded fake network for the Raft simulator.

Real networks drop, duplicate, delay and reorder packets and split into
partitions; Raft must stay safe through all of it.  This module models those
faults deterministically: every decision is drawn from the ``random.Random``
handed in, so one seed always produces the same run.

Time is an integer count of *units*; the simulator maps a number of units to
one Raft tick, which lets several round trips happen within a tick, as on a
real LAN where latency is far below the election timeout.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from storg.raft.types import Message, MessageType


@dataclass(slots=True)
class NetProfile:
    """How hostile the network is right now.

    Delays are in time units.  ``long_delay`` is the chance that a message is
    held back for up to ``long_delay_max`` units, which is what makes later
    messages overtake it (reordering).
    """

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 1
    max_delay: int = 4
    long_delay: float = 0.0
    long_delay_max: int = 40
    fifo: bool = True
    """Keep each link's messages in order (like TCP); False lets delays reorder them."""


RELIABLE = NetProfile()
"""No loss, no duplicates, short delays: what scenario tests start from."""


@dataclass(slots=True)
class Envelope:
    """A message in flight plus what travels beside it.

    ``attachment`` carries the snapshot data of a SNAPSHOT message (the side
    stream of a real node); ``sender_incarnation`` lets the simulator tell
    whether the stream's sender is still the same process when it lands.
    """

    deliver_at: int
    msg: Message
    attachment: Any = None
    sender_incarnation: int = 0


DropHook = Callable[[Envelope], None]


class SimNetwork:
    """Messages in flight, ordered by delivery time, with faults.

    Partitions: every node belongs to a group (default group 0); messages only
    pass between nodes of the same group.  ``cut`` removes one direction of one
    link, for asymmetric faults.  ``drop_filter`` lets a test drop exactly the
    messages it wants.  Reachability is checked both when a message is sent and
    when it lands, so a partition also kills what was already in flight.
    """

    def __init__(self, rng: random.Random, profile: NetProfile = RELIABLE) -> None:
        self.rng = rng
        self.profile = profile
        self._heap: list[tuple[int, int, Envelope]] = []
        self._seq = 0
        self._link_last: dict[tuple[str, str], int] = {}
        self._group: dict[str, int] = {}
        self._next_group = 1
        self._cut: set[tuple[str, str]] = set()
        self.drop_filter: Callable[[Message], bool] | None = None
        self.on_drop: DropHook | None = None
        self.sent: Counter[MessageType] = Counter()
        self.dropped = 0
        self.record: list[Message] | None = None

    # -- topology -------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split into the given groups; unnamed nodes form one more group."""
        self._group = {}
        for g in groups:
            gid = self._next_group
            self._next_group += 1
            for node in g:
                self._group[node] = gid

    def isolate(self, node: str) -> None:
        """Cut one node off from everybody, leaving other groups as they are."""
        self._group[node] = self._next_group
        self._next_group += 1

    def cut(self, frm: str, to: str) -> None:
        """Drop every message from ``frm`` to ``to`` (one direction only)."""
        self._cut.add((frm, to))

    def heal(self) -> None:
        """Everybody can reach everybody again."""
        self._group = {}
        self._cut.clear()

    def reachable(self, frm: str, to: str) -> bool:
        return (self._group.get(frm, 0) == self._group.get(to, 0)
                and (frm, to) not in self._cut)

    def groups(self) -> list[list[str]]:
        """The current non-default groups, for traces."""
        by: dict[int, list[str]] = {}
        for node, gid in self._group.items():
            by.setdefault(gid, []).append(node)
        return [sorted(v) for _, v in sorted(by.items())]

    # -- traffic --------------------------------------------------------

    def send(self, now: int, msg: Message, attachment: Any = None,
             sender_incarnation: int = 0) -> None:
        """Put a message on the wire, maybe losing or duplicating it."""
        self.sent[msg.type] += 1
        if self.record is not None:
            self.record.append(msg)
        env = Envelope(0, msg, attachment, sender_incarnation)
        p = self.profile
        if not self.reachable(msg.frm, msg.to) or (p.drop and self.rng.random() < p.drop):
            self._drop(env)
            return
        if self.drop_filter is not None and self.drop_filter(msg):
            self._drop(env)
            return
        self._enqueue(now, env)
        if p.duplicate and self.rng.random() < p.duplicate:
            dup = Envelope(0, dataclasses.replace(msg), attachment, sender_incarnation)
            self._enqueue(now, dup)

    def _enqueue(self, now: int, env: Envelope) -> None:
        p = self.profile
        if p.long_delay and self.rng.random() < p.long_delay:
            delay = self.rng.randint(p.max_delay, max(p.max_delay, p.long_delay_max))
        else:
            delay = self.rng.randint(p.min_delay, p.max_delay)
        env.deliver_at = now + delay
        if p.fifo:
            link = (env.msg.frm, env.msg.to)
            env.deliver_at = max(env.deliver_at, self._link_last.get(link, 0))
            self._link_last[link] = env.deliver_at
        self._seq += 1
        heapq.heappush(self._heap, (env.deliver_at, self._seq, env))

    def _drop(self, env: Envelope) -> None:
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop(env)

    def next_time(self) -> int | None:
        """When the next message lands, or None if nothing is in flight."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> Envelope | None:
        """The next message due at or before ``now`` that is still deliverable."""
        while self._heap and self._heap[0][0] <= now:
            env = heapq.heappop(self._heap)[2]
            if self.reachable(env.msg.frm, env.msg.to):
                return env
            self._drop(env)
        return None

    def discard(self, pred: Callable[[Message], bool]) -> int:
        """Lose the in-flight messages matching ``pred`` (a sender died mid-send)."""
        keep = [item for item in self._heap if not pred(item[2].msg)]
        lost = len(self._heap) - len(keep)
        if lost:
            heapq.heapify(keep)
            self._heap = keep
        return lost

    def in_flight(self) -> int:
        return len(self._heap)

    def clear(self) -> None:
        """Lose everything in flight (without calling the drop hook)."""
        self._heap.clear()
