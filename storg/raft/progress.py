"""What the leader knows about each follower's log, and how fast to feed it.

Modelled on etcd's Progress.  A follower is in one of three states:

* PROBE: the leader does not know where the follower's log matches; it sends
  one APPEND and waits for the answer (or the next heartbeat response)
  before sending another, so a lagging or unreachable follower costs one
  message per heartbeat interval, not a flood.
* REPLICATE: the logs match up to ``match``; the leader streams APPENDs
  optimistically (``next`` moves as soon as a message is sent) within a
  bounded window of ``max_inflight`` unacknowledged messages, so each entry
  is sent once and a slow follower cannot make the leader queue unbounded
  traffic.
* SNAPSHOT: the follower needs entries the leader compacted away; the
  leader sent a SNAPSHOT and sends nothing else until it hears the outcome.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import NamedTuple


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class ProgressView(NamedTuple):
    """A read-only picture of one follower's progress (status, tests)."""

    match: int
    next: int
    state: str


class Progress:
    """Replication state of one peer, owned by the leader."""

    __slots__ = (
        "match", "next", "state", "probe_sent", "pending_snapshot",
        "recent_active", "inflights", "max_inflight", "send_empty",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        # Last index carried by each unacknowledged APPEND, oldest first.
        self.inflights: deque[int] = deque()
        self.max_inflight = max(1, max_inflight)
        # Set when a heartbeat response suggests an APPEND was lost: send an
        # (empty) APPEND so the follower's answer reveals the gap.
        self.send_empty = False

    # -- state transitions -------------------------------------------------

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()
        self.send_empty = False

    def become_probe(self) -> None:
        """Start probing right after what is known to match (or the snapshot)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    # -- events -------------------------------------------------------------

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged matching up to ``index``; False if stale."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, next_hint: int) -> bool:
        """The follower rejected an APPEND whose previous index was ``rejected``.

        ``next_hint`` is where the leader's fast backtracking says to resume.
        Returns False when the rejection is stale (answers an older message).
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            # The follower is known to match at ``match``; a rejection above
            # it means a message was lost or reordered: probe from there.
            self.become_probe()
            return True
        if self.state == ProgressState.SNAPSHOT:
            return False
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, next_hint), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last: int) -> None:
        """An APPEND carrying entries up to ``last`` went out."""
        if self.state == ProgressState.REPLICATE:
            self.next = last + 1
            self.inflights.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def sent_probe(self) -> None:
        """An empty APPEND went out."""
        if self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_acked(self, index: int) -> None:
        """Release the window slots of messages acknowledged up to ``index``."""
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()

    def free_first(self) -> None:
        """Release one window slot even if unacknowledged (lost-message recovery)."""
        if self.inflights:
            self.inflights.popleft()

    def inflight_full(self) -> bool:
        return len(self.inflights) >= self.max_inflight

    def is_paused(self) -> bool:
        """True if the leader must not send this peer an APPEND now."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflight_full()
        return True

    def view(self) -> ProgressView:
        return ProgressView(self.match, self.next, self.state.value)
