"""BodyPump: decoded pieces reach the sink in order, at its pace, with the transport paused meanwhile."""

from __future__ import annotations

import hashlib

from twisted.internet import defer

from storg.gateway.body import BodyPump


class Flow:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class SlowSink:
    """Takes one piece at a time; each write waits until the test releases it."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.waiting: defer.Deferred[None] | None = None

    def write(self, data: bytes) -> defer.Deferred[None]:
        assert self.waiting is None, "a second write while the first is in flight"
        self.got.append(data)
        self.waiting = defer.Deferred()
        return self.waiting

    def release(self) -> None:
        waiting, self.waiting = self.waiting, None
        assert waiting is not None
        waiting.callback(None)


def test_pieces_wait_for_the_sink_and_the_transport_pauses_while_it_is_busy():
    flow, sink = Flow(), SlowSink()
    md5 = hashlib.md5()
    pump = BodyPump(flow, sink.write, observers=(md5,))
    pump.feed(b"a" * 10)
    assert flow.paused and sink.got == [b"a" * 10]
    pump.feed(b"b" * 10)  # what one socket read still brings after the pause: queued, not written
    assert sink.got == [b"a" * 10] and len(pump.pending) == 1
    done = pump.end()
    assert not done.called
    sink.release()
    assert sink.got == [b"a" * 10, b"b" * 10] and flow.paused
    sink.release()
    assert not flow.paused
    assert pump.done and done.called and done.result == {}
    assert md5.digest() == hashlib.md5(b"a" * 10 + b"b" * 10).digest() and pump.bytes == 20


def test_a_sink_that_is_always_ready_never_pauses():
    flow = Flow()
    got: list[bytes] = []
    pump = BodyPump(flow, lambda data: got.append(data) or None)
    for i in range(100):
        pump.feed(bytes([i]) * 100)
    pump.end()
    assert flow.pauses == 0 and b"".join(got) == b"".join(bytes([i]) * 100 for i in range(100))


def test_decoding_and_trailers():
    flow = Flow()
    got: list[bytes] = []
    pump = BodyPump(flow, lambda data: got.append(data) or None,
                    decode=lambda raw: [raw.upper(), raw], finish=lambda: {"x-amz-checksum-crc32": "AAAA"})
    pump.feed(b"ab")
    assert pump.end().result == {"x-amz-checksum-crc32": "AAAA"}
    assert got == [b"AB", b"ab"]


def test_a_decoding_error_fails_done_and_drops_the_rest():
    flow, sink = Flow(), SlowSink()

    def decode(raw: bytes) -> list[bytes]:
        if raw == b"bad":
            raise ValueError("malformed chunk")
        return [raw]

    pump = BodyPump(flow, sink.write, decode=decode)
    pump.feed(b"good")
    pump.feed(b"bad")
    assert not flow.paused  # resumed: the rest is read and dropped, so the error can be answered
    failures: list[BaseException] = []
    pump.wait().addErrback(lambda f: failures.append(f.value))
    pump.feed(b"more")
    pump.end()
    assert [type(f) for f in failures] == [ValueError] and sink.got == [b"good"]


def test_a_sink_failure_fails_done():
    flow, sink = Flow(), SlowSink()
    pump = BodyPump(flow, sink.write)
    pump.feed(b"x")
    assert sink.waiting is not None
    sink.waiting.errback(ConnectionError("cluster gone"))
    failures: list[BaseException] = []
    pump.wait().addErrback(lambda f: failures.append(f.value))
    assert [type(f) for f in failures] == [ConnectionError] and not flow.paused
