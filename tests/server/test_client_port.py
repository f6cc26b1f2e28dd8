"""The client port: requests answered by id, garbage closes only that connection."""

from __future__ import annotations

import struct

from twisted.internet.testing import StringTransport

from storg.raft.errors import NotLeader
from storg.server.client_port import ClientPortFactory
from storg.wire import (
    CODEC,
    ErrorCode,
    ErrorReply,
    Hello,
    MemberRow,
    StatusReply,
    StatusRequest,
)


class FakeApi:
    def __init__(self, fail_with=None):
        self.fail_with = fail_with

    def client_handlers(self):
        return {StatusRequest: self.status_reply}

    def status_reply(self, request, conn):
        if self.fail_with is not None:
            raise self.fail_with
        return StatusReply(request.request_id, MemberRow("n1", "leader", 2, "n1", 5, 5, 5))

    def leader_client_address(self):
        return "127.0.0.1:8002"


def connect(api):
    proto = ClientPortFactory(api).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def frame(obj) -> bytes:
    body = CODEC.encode(obj)
    return struct.pack(">I", len(body)) + body


def replies(transport):
    data, out = transport.value(), []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(CODEC.decode(data[4:4 + n]))
        data = data[4 + n:]
    return out


def test_status_request_is_answered_with_its_id():
    proto, transport = connect(FakeApi())
    proto.dataReceived(frame(StatusRequest(7)) + frame(StatusRequest(8)))
    got = replies(transport)
    assert [r.request_id for r in got] == [7, 8]
    assert got[0].row.role == "leader"
    assert not transport.disconnecting


def test_not_leader_becomes_an_error_reply_with_the_leaders_address():
    proto, transport = connect(FakeApi(fail_with=NotLeader("n2")))
    proto.dataReceived(frame(StatusRequest(1)))
    (reply,) = replies(transport)
    assert isinstance(reply, ErrorReply)
    assert reply.code == ErrorCode.NOT_LEADER and reply.leader == "127.0.0.1:8002"


def test_garbage_closes_the_connection():
    proto, transport = connect(FakeApi())
    proto.dataReceived(struct.pack(">I", 3) + b"\xff\xff\xff")
    assert transport.disconnecting
    assert transport.value() == b""


def test_a_peer_message_on_the_client_port_closes_the_connection():
    proto, transport = connect(FakeApi())
    proto.dataReceived(frame(Hello(1, "c", "n9", "i")))
    assert transport.disconnecting


def test_oversized_length_prefix_closes_the_connection():
    proto, transport = connect(FakeApi())
    proto.dataReceived(struct.pack(">I", 0x7FFFFFFF) + b"x")
    assert transport.disconnecting


class HoldingApi(FakeApi):
    """StatusRequest with an even id holds a reply; an odd id cancels the one held before it."""

    def __init__(self):
        super().__init__()
        self.held = {}

    def status_reply(self, request, conn):
        if request.request_id % 2 == 0:
            self.held[request.request_id] = conn.send_soon(super().status_reply(request, conn))
            return None
        cancelled = self.held[request.request_id - 1].cancel()
        row = MemberRow("n1", "leader", int(cancelled), "n1", 5, 5, 5)
        return StatusReply(request.request_id, row)


def test_a_held_reply_is_sent_after_the_frames_of_its_read():
    api = HoldingApi()
    proto, transport = connect(api)
    proto.dataReceived(frame(StatusRequest(2)) + frame(StatusRequest(4)))
    assert [r.request_id for r in replies(transport)] == [2, 4]
    assert not api.held[2].cancel()  # already sent: too late to drop


def test_a_held_reply_made_moot_in_the_same_read_is_never_sent():
    api = HoldingApi()
    proto, transport = connect(api)
    proto.dataReceived(frame(StatusRequest(2)) + frame(StatusRequest(3)))
    got = replies(transport)
    assert [r.request_id for r in got] == [3] and got[0].row.term == 1


def test_a_held_reply_goes_out_when_the_next_frame_comes_in_a_later_read():
    api = HoldingApi()
    proto, transport = connect(api)
    both = frame(StatusRequest(2)) + frame(StatusRequest(3))
    cut = len(frame(StatusRequest(2))) + 2
    proto.dataReceived(both[:cut])
    assert [r.request_id for r in replies(transport)] == [2]
    proto.dataReceived(both[cut:])
    got = replies(transport)
    assert [r.request_id for r in got] == [2, 3] and got[1].row.term == 0
