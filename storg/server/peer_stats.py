"""Plain counters of the peer transport, kept on the reactor thread for ``/metrics``.

The transport counts what it does as it does it (bytes each way, messages
dropped, connections refused) in ordinary ints; it imports nothing of
Prometheus.  The metrics layer (:mod:`storg.server.http.metrics`) reads
these figures on the reactor thread when it publishes a snapshot, so no
other thread ever touches them.

Round-trip time is measured on Raft heartbeats: the time from sending a
HEARTBEAT to a peer until its next HEARTBEAT_RESP arrives.  Only the leader
sends heartbeats, so only the leader has RTT figures; that is where they
matter (a slow follower slows commits).  One outstanding heartbeat per
peer is timed, so a lost response costs one sample, never a wrong one
longer than the gap to the next response.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from storg.raft.types import Message, MessageType

MAX_REASONS = 64
"""Distinct refusal reasons kept: strangers choose the reasons, so they are bounded."""


class PeerStats:
    """What the peer transport counts; every method runs on the reactor thread."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.bytes_sent: Counter[str] = Counter()
        self.bytes_received: Counter[str] = Counter()
        self.messages_sent: Counter[str] = Counter()
        self.messages_received: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.rtt_seconds: dict[str, float] = {}
        self.last_heard: dict[str, float] = {}
        """reactor.seconds() of the last message from each peer."""
        self._heartbeat_sent: dict[str, float] = {}

    def sent(self, msg: Message, nbytes: int) -> None:
        self.bytes_sent[msg.to] += nbytes
        self.messages_sent[msg.to] += 1
        if msg.type == MessageType.HEARTBEAT:
            self._heartbeat_sent.setdefault(msg.to, self._clock.seconds())

    def received(self, msg: Message, nbytes: int) -> None:
        now = self._clock.seconds()
        self.bytes_received[msg.frm] += nbytes
        self.messages_received[msg.frm] += 1
        self.last_heard[msg.frm] = now
        if msg.type == MessageType.HEARTBEAT_RESP:
            started = self._heartbeat_sent.pop(msg.frm, None)
            if started is not None:
                self.rtt_seconds[msg.frm] = now - started

    def drop(self, peer: str) -> None:
        self.dropped[peer] += 1

    def refuse(self, reason: str) -> None:
        """Count a refused connection under a short reason kind (``instance``, ``tls``, ...)."""
        if reason not in self.refused and len(self.refused) >= MAX_REASONS:
            reason = "other"
        self.refused[reason] += 1

    def forget(self, peer: str) -> None:
        """A removed member: its series go, so they do not linger in every scrape."""
        for table in (self.bytes_sent, self.bytes_received, self.messages_sent,
                      self.messages_received, self.dropped):
            table.pop(peer, None)
        self.rtt_seconds.pop(peer, None)
        self.last_heard.pop(peer, None)
        self._heartbeat_sent.pop(peer, None)
