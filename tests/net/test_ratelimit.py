"""RateLimitedLog: at most N lines per reason and interval, then one summary line."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from storg.net.ratelimit import RateLimitedLog


def make(lines: int = 3, interval: float = 10.0):
    events: list[str] = []
    logger = Logger(namespace="test.ratelimit", observer=lambda e: events.append(formatEvent(e)))
    clock = Clock()
    return RateLimitedLog(logger, clock, lines=lines, interval=interval), clock, events


def test_lines_beyond_the_limit_are_counted_then_summarized_once() -> None:
    rl, clock, events = make()
    written = [rl.emit("conn", "refused {n}", n=n) for n in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert events == ["refused 0", "refused 1", "refused 2"]
    clock.advance(10)
    assert events[3:] == ["conn: ... and 7 more in the last 10 s"]
    assert rl.suppressed_total == 7
    # A new window writes again.
    assert rl.emit("conn", "refused {n}", n=99)
    assert events[-1] == "refused 99"
    assert not clock.getDelayedCalls()


def test_reasons_are_limited_apart() -> None:
    rl, clock, events = make(lines=1)
    assert rl.emit("a", "a1") and rl.emit("b", "b1")
    assert not rl.emit("a", "a2")
    assert events == ["a1", "b1"]
    clock.advance(10)
    assert events[2:] == ["a: ... and 1 more in the last 10 s"]


def test_a_window_without_suppression_writes_no_summary() -> None:
    rl, clock, events = make(lines=2)
    rl.emit("a", "x")
    clock.advance(11)
    rl.emit("a", "y")
    assert events == ["x", "y"]
    assert not clock.getDelayedCalls()


def test_stop_flushes_pending_summaries() -> None:
    rl, clock, events = make(lines=1)
    rl.emit("a", "x")
    rl.emit("a", "x")
    rl.stop()
    assert events == ["x", "a: ... and 1 more in the last 10 s"]
    assert not clock.getDelayedCalls()
