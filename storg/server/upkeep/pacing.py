"""Pacing for background work: a byte-rate limiter and how much of a scan runs per reactor turn.

Repair, scrub and fill walk the whole chunk map and move or re-read bytes
in the background; clients and heartbeats must not notice.  They share
these two tools so they pace alike.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

SCAN_SLICE = 2000
"""Chunk map entries examined per reactor turn: a large map never stalls heartbeats."""


class RateLimiter:
    """Paces transfers to ``rate`` bytes per second by reserving time slots.

    Each reservation starts when the previous ones have used up their share
    of time; the first starts at once.  Idle time is not banked, so a burst
    after a quiet period is still paced.
    """

    def __init__(self, reactor: Any, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.reactor = reactor
        self.rate = rate
        self._free_at = 0.0

    def reserve(self, size: int) -> defer.Deferred:
        """Fires when a transfer of ``size`` bytes may start."""
        now = self.reactor.seconds()
        start = max(now, self._free_at)
        self._free_at = start + size / self.rate
        if start <= now:
            return defer.succeed(None)
        return task.deferLater(self.reactor, start - now, lambda: None)
