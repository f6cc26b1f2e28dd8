"""A one-line progress bar for put and get, drawn on stderr when it is a terminal.

It is a plain ``progress(done, total)`` callback of the client library, so
the library knows nothing about terminals; redraws are rate-limited so a
fast transfer does not spend its time repainting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal above bytes."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressBar:
    """Draws ``label [#####.....]  45%  12.0 MiB / 26.7 MiB  30.1 MiB/s`` in place."""

    def __init__(self, label: str, stream: TextIO, *, width: int = 24, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.stream = stream
        self.width = width
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last_draw = float("-inf")
        self._drawn = False
        self._done = 0
        self._total: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        self._done, self._total = done, total
        now = self.clock()
        if now - self._last_draw >= self.interval or (total is not None and done >= total):
            self._last_draw = now
            self._draw(now)

    def render(self, done: int, total: int | None, elapsed: float) -> str:
        rate = human_bytes(done / elapsed) + "/s" if elapsed > 0 else ""
        if total is None:
            return f"{self.label}  {human_bytes(done)}  {rate}".rstrip()
        fraction = 1.0 if total == 0 else min(done / total, 1.0)
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        return (f"{self.label} [{bar}] {fraction * 100:3.0f}%  "
                f"{human_bytes(done)} / {human_bytes(total)}  {rate}").rstrip()

    def _draw(self, now: float) -> None:
        line = self.render(self._done, self._total, now - self.started)
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the bar's line (drawing the final state) so later output starts on a new line."""
        if self._drawn:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def progress_for(label: str, stream: TextIO) -> ProgressBar | None:
    """A bar on ``stream`` if it is a terminal, else None (quiet when piped or redirected)."""
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError):
        is_tty = False
    return ProgressBar(label, stream) if is_tty else None
