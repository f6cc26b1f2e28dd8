"""A log whose lines are rate-limited per reason: what a listener under attack writes.

Every refused or dropped connection used to log a line.  That is right for
one broken peer and wrong for a thousand connections a second: the log
fills the disk, buries the one line an operator needs, and costs more CPU
than the refusal itself.  :class:`RateLimitedLog` writes at most ``lines``
lines per ``interval`` seconds for each *reason*, counts the rest, and once
the interval is over writes one summary line ("... and K more in the last
N s"), so nothing is hidden, only folded.

A reason is a short fixed string chosen by the code (``"client
connections"``, ``"idle"``), never text from the peer: the table of reasons
is then bounded by the program, not by what strangers send.  The clock is
the reactor's (``seconds`` and ``callLater``), so tests drive it with
``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger, LogLevel

DEFAULT_LINES = 5
"""Lines per reason and interval before the rest are only counted."""

DEFAULT_INTERVAL = 60.0
"""Seconds of one window."""


@dataclass
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0
    flush: Any = None  # the DelayedCall that writes the summary


class RateLimitedLog:
    """At most ``lines`` lines per ``interval`` seconds per reason, then a summary line."""

    def __init__(self, logger: Logger, reactor: Any = None, *, lines: int = DEFAULT_LINES,
                 interval: float = DEFAULT_INTERVAL, level: LogLevel = LogLevel.warn) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        if lines < 1 or interval <= 0:
            raise ValueError("lines and interval must be positive")
        self.logger = logger
        self.reactor = reactor
        self.lines = lines
        self.interval = interval
        self.level = level
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0
        """Lines folded into summaries since the start (for tests and status)."""

    def emit(self, reason: str, format: str, **kwargs: Any) -> bool:
        """Log ``format`` (a twisted.logger format) under ``reason``; False if it was only counted."""
        now = self.reactor.seconds()
        window = self._windows.get(reason)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._summarize(reason, window)
            window = self._windows[reason] = _Window(now)
        if window.written < self.lines:
            window.written += 1
            self.logger.emit(self.level, format, **kwargs)
            return True
        window.suppressed += 1
        self.suppressed_total += 1
        if window.flush is None:
            delay = max(0.0, window.start + self.interval - now)
            window.flush = self.reactor.callLater(delay, self._end_window, reason, window)
        return False

    def _end_window(self, reason: str, window: _Window) -> None:
        window.flush = None
        if self._windows.get(reason) is window:
            del self._windows[reason]
        self._summarize(reason, window)

    def _summarize(self, reason: str, window: _Window) -> None:
        if window.flush is not None and window.flush.active():
            window.flush.cancel()
        window.flush = None
        if window.suppressed:
            count, window.suppressed = window.suppressed, 0
            self.logger.emit(self.level, "{reason}: ... and {count} more in the last {interval:g} s",
                             reason=reason, count=count, interval=self.interval)

    def stop(self) -> None:
        """Write the pending summaries now and cancel their timers (a stopping node)."""
        windows, self._windows = self._windows, {}
        for reason, window in windows.items():
            self._summarize(reason, window)


class OncePerReason:
    """Logs a line the first time its key is seen, and again only every ``interval`` seconds.

    For refusals that name who was refused and why (a TLS handshake from a
    host, with OpenSSL's reason; a request its certificate's role does not
    allow): each distinct one reaches the operator at once, and a stranger
    retrying every second writes one line a minute, not sixty.  Unlike
    :class:`RateLimitedLog` the key holds text from the peer (the reason
    names its certificate), so the table is bounded by size: past
    ``max_keys`` keys it starts over.
    """

    def __init__(self, logger: Logger, reactor: Any = None, *, interval: float = DEFAULT_INTERVAL,
                 max_keys: int = 1024, level: LogLevel = LogLevel.warn) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.logger = logger
        self.reactor = reactor
        self.interval = interval
        self.max_keys = max_keys
        self.level = level
        self._last: dict[str, float] = {}

    def warn(self, key: str, format: str, **kwargs: Any) -> bool:
        """Log ``format`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = self.reactor.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        self.logger.emit(self.level, format, **kwargs)
        return True
