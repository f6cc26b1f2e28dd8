"""FrameReceiver: the same frames as Int32StringReceiver, from any split of the bytes."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver

from storg.net.framing import LARGE_FRAME, FrameReceiver, send_bulk
from storg.wire import CODEC, CodecError
from storg.wire.bulk import BULK_MIN, bulk_frame, decode_bulk
from storg.wire.chunks import ChunkData, ChunkPut, ChunkPutAfter
from storg.wire.codec import MAX_FRAME_BYTES
from storg.wire.files import GetData, PutData
from storg.wire.record import replace as replace_record


class Recorder(FrameReceiver):
    """Collects frames; optional hooks let a test act from inside stringReceived."""

    def __init__(self, on_frame=None) -> None:
        self.frames: list[bytes] = []
        self.on_frame = on_frame

    def stringReceived(self, string: bytes) -> None:
        assert type(string) is bytes
        self.frames.append(string)
        if self.on_frame is not None:
            self.on_frame(self, string)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def connected(proto: FrameReceiver) -> StringTransport:
    transport = StringTransport()
    proto.makeConnection(transport)
    return transport


def test_max_length_defaults_to_the_codec_limit() -> None:
    assert FrameReceiver.MAX_LENGTH == MAX_FRAME_BYTES == 8 * 1024 * 1024
    assert issubclass(FrameReceiver, Int32StringReceiver)


def test_every_split_point_of_a_stream() -> None:
    payloads = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"", b"z"]
    stream = b"".join(frame(p) for p in payloads)
    for cut in range(len(stream) + 1):
        proto = Recorder()
        connected(proto)
        proto.dataReceived(stream[:cut])
        proto.dataReceived(stream[cut:])
        assert proto.frames == payloads, cut


def test_one_byte_at_a_time() -> None:
    payloads = [b"x" * n for n in (0, 1, 3, 4, 5, 300)]
    proto = Recorder()
    connected(proto)
    for byte in b"".join(frame(p) for p in payloads):
        proto.dataReceived(bytes([byte]))
    assert proto.frames == payloads
    assert not proto._rbuf


def test_many_frames_in_one_read_and_a_partial_tail() -> None:
    payloads = [str(i).encode() * (i % 7) for i in range(1000)]
    tail = frame(b"incomplete")[:-3]
    proto = Recorder()
    connected(proto)
    proto.dataReceived(b"".join(frame(p) for p in payloads) + tail)
    assert proto.frames == payloads
    assert bytes(proto._rbuf) == tail
    proto.dataReceived(b"ete")
    assert proto.frames[-1] == b"incomplete"


def test_zero_length_frame() -> None:
    proto = Recorder()
    connected(proto)
    proto.dataReceived(b"\x00\x00\x00\x00")
    assert proto.frames == [b""]


class Small(Recorder):
    MAX_LENGTH = 1000


def test_exactly_max_length_is_accepted() -> None:
    proto = Small()
    transport = connected(proto)
    proto.dataReceived(frame(b"m" * 1000))
    assert proto.frames == [b"m" * 1000]
    assert not transport.disconnecting


def test_one_over_max_length_closes_before_the_body_arrives() -> None:
    proto = Small()
    transport = connected(proto)
    proto.dataReceived(frame(b"ok") + struct.pack("!I", 1001))
    assert proto.frames == [b"ok"]
    assert transport.disconnecting
    # Whatever follows is ignored and not buffered.
    proto.dataReceived(b"m" * 1001 + frame(b"late"))
    assert proto.frames == [b"ok"]
    assert not proto._rbuf


def test_real_max_length_frame_in_64k_reads() -> None:
    payload = bytes(range(256)) * (MAX_FRAME_BYTES // 256)
    data = frame(payload) + frame(b"next")
    proto = Recorder()
    transport = connected(proto)
    step = 65536
    for i in range(0, len(data), step):
        proto.dataReceived(data[i:i + step])
    assert len(proto.frames) == 2
    assert proto.frames[0] == payload and proto.frames[1] == b"next"
    assert not transport.disconnecting


def test_huge_length_prefix_closes() -> None:
    proto = Recorder()
    transport = connected(proto)
    proto.dataReceived(b"\xff\xff\xff\xff")
    assert transport.disconnecting
    assert proto.frames == []


def test_no_frames_after_the_receiver_closes_the_connection() -> None:
    def close_on_bad(proto: Recorder, data: bytes) -> None:
        if data == b"bad":
            proto.transport.loseConnection()

    proto = Recorder(close_on_bad)
    connected(proto)
    proto.dataReceived(frame(b"one") + frame(b"bad") + frame(b"three"))
    assert proto.frames == [b"one", b"bad"]
    proto.dataReceived(frame(b"four"))
    assert proto.frames == [b"one", b"bad"]


def test_pause_stops_delivery_and_resume_continues() -> None:
    def pause_on_first(proto: Recorder, data: bytes) -> None:
        if len(proto.frames) == 1:
            proto.pauseProducing()

    proto = Recorder(pause_on_first)
    transport = connected(proto)
    proto.dataReceived(frame(b"a") + frame(b"b") + frame(b"c"))
    assert proto.frames == [b"a"]
    assert transport.producerState == "paused"
    proto.dataReceived(frame(b"d"))
    assert proto.frames == [b"a"]
    proto.resumeProducing()
    assert proto.frames == [b"a", b"b", b"c", b"d"]
    assert not proto._rbuf


def test_reentrant_data_received_delivers_each_frame_once_in_order() -> None:
    def feed_more(proto: Recorder, data: bytes) -> None:
        if data == b"a":
            proto.dataReceived(frame(b"inner") + frame(b"in")[:3])
        if data == b"b":
            proto.pauseProducing()
            proto.resumeProducing()

    proto = Recorder(feed_more)
    connected(proto)
    proto.dataReceived(frame(b"a") + frame(b"b"))
    proto.dataReceived(frame(b"in")[3:])
    assert proto.frames == [b"a", b"b", b"inner", b"in"]


def test_send_string_is_int32_framed() -> None:
    proto = Recorder()
    transport = connected(proto)
    proto.sendString(b"abc")
    assert transport.value() == b"\x00\x00\x00\x03abc"
    echo = Recorder()
    connected(echo)
    echo.dataReceived(transport.value())
    assert echo.frames == [b"abc"]


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20])
def test_agrees_with_twisted_receiver(size: int) -> None:
    class Reference(Int32StringReceiver):
        MAX_LENGTH = MAX_FRAME_BYTES

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def stringReceived(self, string: bytes) -> None:
            self.frames.append(string)

    data = b"".join(frame(bytes([i % 251]) * (size + i)) for i in range(5))
    ours, theirs = Recorder(), Reference()
    connected(ours)
    theirs.makeConnection(StringTransport())
    for i in range(0, len(data), 7919):
        ours.dataReceived(data[i:i + 7919])
        theirs.dataReceived(data[i:i + 7919])
    assert ours.frames == theirs.frames
    assert len(ours.frames) == 5


# --- large frames collected read by read, and bulk frames ------------------------

BIG = LARGE_FRAME + 12345


def test_large_frame_split_anywhere_near_its_edges() -> None:
    """Two reads, cut at every point around the big frame's header and end."""
    big = bytes(range(256)) * (BIG // 256) + b"!" * (BIG % 256)
    stream = frame(b"before") + frame(big) + frame(b"after") + frame(b"x" * 5000)
    start = len(frame(b"before"))
    end = start + 4 + BIG
    cuts = list(range(start - 3, start + 12)) + list(range(end - 6, end + 12))
    for cut in cuts:
        proto = Recorder()
        connected(proto)
        proto.dataReceived(stream[:cut])
        proto.dataReceived(stream[cut:])
        assert proto.frames == [b"before", big, b"after", b"x" * 5000], cut
        assert proto._pieces is None and proto._whole is None and not proto._rbuf


def test_large_frame_in_small_reads_is_joined_once_whole() -> None:
    big = b"q" * BIG
    stream = frame(big) + frame(b"tail")
    proto = Recorder()
    connected(proto)
    for i in range(0, len(stream), 1000):
        proto.dataReceived(stream[i:i + 1000])
        if i + 1000 < 4 + BIG:
            assert proto.frames == []
            # The pieces are kept as they came, not appended to the buffer.
            assert len(proto._rbuf) < 1000
    assert proto.frames == [big, b"tail"]


def test_a_completed_large_frame_waits_while_paused() -> None:
    def pause_on_first(proto: Recorder, data: bytes) -> None:
        if data == b"first":
            proto.pauseProducing()

    big = b"z" * BIG
    stream = frame(b"first") + frame(big) + frame(b"last")
    proto = Recorder(pause_on_first)
    connected(proto)
    proto.dataReceived(stream[:20])
    assert proto.frames == [b"first"]
    proto.dataReceived(stream[20:])  # completes the big frame while paused
    assert proto.frames == [b"first"]
    proto.resumeProducing()
    assert proto.frames == [b"first", big, b"last"]


def test_closing_while_collecting_drops_the_pieces() -> None:
    proto = Recorder()
    transport = connected(proto)
    proto.dataReceived(frame(b"y" * BIG)[:30000])
    assert proto._pieces is not None
    transport.loseConnection()
    proto.dataReceived(b"y" * 40000)
    proto.connectionLost(None)
    assert proto._pieces is None and proto._whole is None and proto.frames == []


SAMPLES = [
    PutData(1, b"p" * (BULK_MIN + 3)),
    GetData(2, b"g" * (BULK_MIN + 5)),
    ChunkPut(3, "ab" * 32, b"c" * BULK_MIN),
    ChunkPutAfter(4, "cd" * 32, 99, b"a" * (BULK_MIN + 1)),
    ChunkData(5, "ef" * 32, b"d" * (2 * BULK_MIN)),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_bulk_frame_is_the_codec_frame_and_decodes_to_a_view(obj) -> None:
    head, payload = bulk_frame(obj)
    assert payload is obj.data
    body = CODEC.encode(obj)
    assert head + payload == frame(body)
    decoded = decode_bulk(body)
    assert isinstance(decoded.data, memoryview)
    assert type(decoded) is type(obj)
    assert replace_record(decoded, data=bytes(decoded.data)) == CODEC.decode(body) == obj
    transport = StringTransport()
    send_bulk(transport, obj)
    assert transport.value() == frame(body)


def test_decode_bulk_refuses_a_payload_length_that_disagrees_with_the_frame() -> None:
    body = bytearray(CODEC.encode(GetData(9, b"v" * BULK_MIN)))
    body[13] ^= 1  # the low byte of the payload's u32 length
    with pytest.raises(CodecError):
        decode_bulk(bytes(body))
    with pytest.raises(CodecError):
        decode_bulk(bytes(body[:-1]))


def test_small_and_other_frames_decode_as_usual() -> None:
    small = CODEC.encode(GetData(1, b"tiny"))
    assert decode_bulk(small) == GetData(1, b"tiny")
    assert isinstance(decode_bulk(small).data, bytes)
    transport = StringTransport()
    send_bulk(transport, GetData(1, b"tiny"))
    assert transport.value() == frame(small)
