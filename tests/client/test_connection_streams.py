"""RequestConnection on an in-memory transport: multi-frame replies, errors, flow control."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from storg.client.errors import NotFoundError, ServerError
from storg.net.connection import RequestConnection
from storg.wire import CODEC, ErrorCode, ErrorReply
from storg.wire.files import (
    FileInfo,
    GetData,
    GetEnd,
    GetRequest,
    GetStart,
    LsReply,
    LsRequest,
    StatRequest,
)


def frame(obj) -> bytes:
    body = CODEC.encode(obj)
    return struct.pack("!I", len(body)) + body


def sent_frames(transport: StringTransport) -> list:
    data = transport.value()
    out = []
    while data:
        (n,) = struct.unpack_from("!I", data)
        out.append(CODEC.decode(data[4:4 + n]))
        data = data[4 + n:]
    return out


@pytest.fixture
def conn():
    c = RequestConnection()
    c.makeConnection(StringTransport())
    return c


def results(d):
    box = []
    d.addBoth(box.append)
    return box


def test_a_stream_sees_every_frame_until_the_terminal_one(conn):
    seen = []
    info = FileInfo("/f", 2, "00" * 32, 0, 1)
    stream = conn.request_stream(lambda rid: GetRequest(rid, "/f"),
                                 lambda f: seen.append(f) or isinstance(f, GetEnd))
    got = results(stream.done)
    assert sent_frames(conn.transport) == [GetRequest(stream.request_id, "/f")]
    rid = stream.request_id
    conn.dataReceived(frame(GetStart(rid, info)) + frame(GetData(rid, b"ab")))
    assert got == [] and len(seen) == 2
    conn.dataReceived(frame(GetEnd(rid)) + frame(GetData(rid, b"late")))
    assert got == [GetEnd(rid)] and len(seen) == 3  # nothing after the end


def test_an_error_reply_midway_ends_the_stream_with_the_specific_error(conn):
    stream = conn.request_stream(lambda rid: LsRequest(rid, "/"), lambda f: not f.more)
    got = results(stream.done)
    rid = stream.request_id
    conn.dataReceived(frame(LsReply(rid, (), True)))
    conn.dataReceived(frame(ErrorReply(rid, int(ErrorCode.NOT_FOUND), "gone")))
    assert isinstance(got[0], Failure) and got[0].check(NotFoundError)
    conn.dataReceived(frame(LsReply(rid, (), False)))  # ignored
    assert len(got) == 1


def test_pipelined_requests_are_matched_by_id(conn):
    first = results(conn.request(lambda rid: StatRequest(rid, "/a")))
    second = results(conn.request(lambda rid: StatRequest(rid, "/b")))
    ids = [f.request_id for f in sent_frames(conn.transport)]
    conn.dataReceived(frame(ErrorReply(ids[1], int(ErrorCode.INTERNAL), "boom")))
    assert first == [] and second[0].check(ServerError)
    assert second[0].value.code == ErrorCode.INTERNAL


def test_losing_the_connection_fails_every_request_and_waiter(conn):
    d = results(conn.request(lambda rid: StatRequest(rid, "/a")))
    conn.transport.producer.pauseProducing()
    waiter = results(conn.wait_writable())
    conn.connectionLost(Failure(ConnectionLost()))
    assert d[0].check(ConnectionLost) and waiter[0].check(ConnectionLost)
    assert results(conn.request(lambda rid: StatRequest(rid, "/b")))[0].check(ConnectionLost)


def test_wait_writable_follows_the_transport_producer_calls(conn):
    assert conn.writable
    assert results(conn.wait_writable()) == [None]
    conn.transport.producer.pauseProducing()  # what a full write buffer does
    assert not conn.writable
    waiter = results(conn.wait_writable())
    assert waiter == []
    conn.transport.producer.resumeProducing()  # the buffer drained
    assert waiter == [None] and conn.writable


def test_a_writer_waiting_for_a_failed_stream_is_released(conn):
    stream = conn.request_stream(lambda rid: StatRequest(rid, "/a"), lambda f: True)
    consumed = results(stream.done)
    conn.transport.producer.pauseProducing()
    waiter = results(conn.wait_writable(stream))
    conn.dataReceived(frame(ErrorReply(stream.request_id, int(ErrorCode.NOT_LEADER), "no", "h:1")))
    assert waiter[0].check(ServerError) and waiter[0].value.not_leader
    assert consumed[0].check(ServerError)
    # Waiting on a stream that has already failed fails at once.
    assert results(conn.wait_writable(stream))[0].check(ServerError)


def test_cancelling_a_request_forgets_it(conn):
    d = conn.request(lambda rid: StatRequest(rid, "/a"))
    got = results(d)
    d.cancel()
    assert len(conn._streams) == 0
    rid = sent_frames(conn.transport)[0].request_id
    conn.dataReceived(frame(ErrorReply(rid, int(ErrorCode.NOT_FOUND), "late")))
    assert len(got) == 1


def test_pause_reading_is_counted(conn):
    conn.pause_reading()
    conn.pause_reading()
    assert conn.transport.producerState == "paused"
    conn.resume_reading()
    assert conn.transport.producerState == "paused"
    conn.resume_reading()
    assert conn.transport.producerState == "producing"
    conn.resume_reading()  # unmatched: ignored
    assert conn.transport.producerState == "producing"


def test_close_unregisters_the_gate_first(conn):
    conn.close()
    assert conn.transport.producer is None and conn.transport.disconnecting
