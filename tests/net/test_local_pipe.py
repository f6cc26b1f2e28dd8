"""storg.net.local_pipe: two protocols in one process joined by memory, on a Clock.

What a TCP connection guarantees the protocols must hold here too: bytes in
order and never delivered inside the writer's call, a receiver that pauses
holds the writer back past the high-water mark (and releases it once it
reads again), a close delivers what was written first, an abort does not,
and both ends hear of the end once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from storg.net.local_pipe import HIGH_WATER, PipeEnd, connect_pipe


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Any] = []
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.append(reason)


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def pair() -> tuple[Clock, Recorder, Recorder, PipeEnd, PipeEnd]:
    clock = Clock()
    a, b = Recorder(), Recorder()
    a_end, b_end = connect_pipe(clock, a, b, "test")
    return clock, a, b, a_end, b_end


def test_both_ends_are_connected_and_bytes_arrive_in_order_on_a_later_turn() -> None:
    clock, a, b, a_end, _ = pair()
    assert a.made and b.made
    a_end.write(b"one ")
    a_end.writeSequence([b"two ", memoryview(b"three")])
    assert b.received == []  # never inside the writer's call
    clock.advance(0)
    assert b"".join(b.received) == b"one two three"


def test_each_end_names_the_other_as_its_peer() -> None:
    _, _, _, a_end, b_end = pair()
    assert a_end.getPeer() is b_end.getHost()
    assert b_end.getPeer() is a_end.getHost()
    assert "test" in str(a_end.getPeer())


def test_a_paused_receiver_gets_nothing_and_the_writer_is_paused_past_the_high_water_mark() -> None:
    clock, _, b, a_end, b_end = pair()
    producer = Producer()
    a_end.registerProducer(producer, True)
    b_end.pauseProducing()  # b's protocol stops reading
    a_end.write(b"x" * (HIGH_WATER // 2))
    clock.advance(0)
    assert b.received == [] and producer.events == []
    a_end.write(b"y" * HIGH_WATER)
    assert producer.events == ["pause"]
    b_end.resumeProducing()
    clock.advance(0)
    assert sum(map(len, b.received)) == HIGH_WATER // 2 + HIGH_WATER
    assert producer.events == ["pause", "resume"]


def test_lose_connection_delivers_what_was_written_then_both_ends_close_once() -> None:
    clock, a, b, a_end, b_end = pair()
    a_end.write(b"last words")
    a_end.loseConnection()
    a_end.loseConnection()
    clock.advance(0)
    assert b"".join(b.received) == b"last words"
    assert len(a.lost) == 1 and len(b.lost) == 1
    assert b.lost[0].check(error.ConnectionDone)
    assert not a_end.connected and not b_end.connected
    a_end.write(b"after")  # a closed transport drops writes, as TCP's does
    clock.advance(0)
    assert b"".join(b.received) == b"last words"


def test_abort_drops_what_is_queued_and_stops_the_producers() -> None:
    clock, a, b, a_end, b_end = pair()
    producer = Producer()
    b_end.registerProducer(producer, True)
    a_end.write(b"never seen")
    a_end.abortConnection()
    clock.advance(0)
    assert b.received == []
    assert a.lost[0].check(error.ConnectionAborted) and b.lost[0].check(error.ConnectionAborted)
    assert producer.events == ["stop"]


def test_a_close_waits_for_a_paused_receiver() -> None:
    clock, a, b, a_end, b_end = pair()
    b_end.pauseProducing()
    a_end.write(b"held")
    a_end.loseConnection()
    clock.advance(0)
    assert b.received == [] and a.lost == [] and b.lost == []
    b_end.resumeProducing()
    clock.advance(0)
    assert b.received == [b"held"] and len(a.lost) == len(b.lost) == 1
