"""Client-port limits: connections, idle timeout, requests in flight, uploads per connection.

Each test exceeds one limit, checks the clear answer (or the flow control)
and that the node keeps serving every other connection.  Connection limits
run over real loopback TCP with the real client (RequestConnection);
timing is driven by ``task.Clock`` where the code takes a clock.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from storg.config import LimitTuning
from storg.net.connection import RequestConnection, connect
from storg.net.errors import LimitExceeded
from storg.server.client_port import ClientConnection, ClientPortFactory, RequestError
from storg.wire import CODEC, ErrorCode, MemberRow, StatusReply, StatusRequest
from storg.wire.files import PutData, PutEnd, PutStart

from tests.server.test_files_streaming import Conn, make


class Api:
    """A node that answers StatusRequest, at once or (``hold``) when the test says so."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[defer.Deferred, int]] = []
        self.calls = 0

    def client_handlers(self):
        return {StatusRequest: self.status}

    def status(self, request, conn):
        self.calls += 1
        reply = StatusReply(request.request_id, MemberRow("n1", "leader", 1, "n1", 1, 1, 1))
        if not self.hold:
            return reply
        d: defer.Deferred = defer.Deferred()
        self.held.append((d, request.request_id))
        return d.addCallback(lambda _: reply)

    def release(self) -> None:
        d, _ = self.held.pop(0)
        d.callback(None)

    def leader_client_address(self) -> str:
        return ""


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def warnings():
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def listener():
    """A client port on a free loopback port, for a given LimitTuning."""
    made: list = []

    def start(limits: LimitTuning, api: Api | None = None):
        factory = ClientPortFactory(api or Api(), limits, reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        made.append((factory, port))
        return factory, f"127.0.0.1:{port.getHost().port}"

    conns: list[RequestConnection] = []
    yield start, conns
    for conn in conns:
        conn.close()
    for factory, port in made:
        factory.drops.stop()
        await port.stopListening()
        for proto in list(factory.connections):
            proto.close_connection()
    await wait_for(lambda: all(not f.connections for f, _ in made), "connections closed")


async def status(conn: RequestConnection):
    return await conn.request(StatusRequest)


# -- connections per listener ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_connection_over_the_limit_is_refused_with_limit_exceeded(listener, warnings) -> None:
    start, conns = listener
    factory, address = start(LimitTuning(max_client_connections=2))
    first = await connect(reactor, address)
    second = await connect(reactor, address)
    conns += [first, second]
    assert isinstance(await status(first), StatusReply)
    await wait_for(lambda: len(factory.connections) == 2, "two connections counted")

    third = await connect(reactor, address)
    conns.append(third)
    with pytest.raises(LimitExceeded, match="max_client_connections"):
        await status(third)
    await wait_for(lambda: not third.connected, "the refused connection closed")
    await wait_for(lambda: factory.lingering == 0, "the server side of the refusal closed")
    assert factory.refused == 1
    assert sum("refusing client connection" in line for line in warnings) == 1

    # Everyone else keeps being served, and a freed slot is given to the next one.
    assert isinstance(await status(second), StatusReply)
    first.close()
    await wait_for(lambda: len(factory.connections) == 1, "the first connection released")
    fourth = await connect(reactor, address)
    conns.append(fourth)
    assert isinstance(await status(fourth), StatusReply)


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_at_a_limited_rate(listener, warnings) -> None:
    start, conns = listener
    factory, address = start(LimitTuning(max_client_connections=1))
    conns.append(await connect(reactor, address))
    await wait_for(lambda: len(factory.connections) == 1, "one connection counted")
    for _ in range(12):
        conn = await connect(reactor, address)
        conns.append(conn)
        with pytest.raises(LimitExceeded):
            await status(conn)
    assert factory.refused == 12
    lines = [line for line in warnings if "refusing client connection" in line]
    assert len(lines) == factory.drops.lines  # the rest only counted...
    assert factory.drops.suppressed_total == 12 - factory.drops.lines
    factory.drops.stop()  # ...and summed up in one line at the end of the window
    assert any("... and 7 more" in line for line in warnings), warnings


# -- idle timeout ------------------------------------------------------------------------

def frame(obj: object) -> bytes:
    body = CODEC.encode(obj)
    return struct.pack(">I", len(body)) + body


def reply_ids(transport: StringTransport) -> list[int]:
    data, ids = transport.value(), []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        ids.append(CODEC.decode(data[4:4 + n]).request_id)
        data = data[4 + n:]
    return ids


def clocked(api: Api, limits: LimitTuning):
    clock = Clock()
    factory = ClientPortFactory(api, limits, clock)

    def open_one():
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    return clock, factory, open_one


def test_idle_connection_is_closed_and_others_are_not() -> None:
    clock, factory, open_one = clocked(Api(), LimitTuning(idle_timeout_s=10))
    idle, idle_transport = open_one()
    busy, busy_transport = open_one()
    clock.advance(6)
    busy.dataReceived(frame(StatusRequest(1)))
    clock.advance(4.5)
    assert idle_transport.disconnecting, "no request and nothing received for 10 s"
    assert not busy_transport.disconnecting, "received 4.5 s ago"
    busy.dataReceived(frame(StatusRequest(2)))
    assert len(reply_ids(busy_transport)) == 2
    clock.advance(9.9)
    assert not busy_transport.disconnecting
    clock.advance(0.2)
    assert busy_transport.disconnecting


def test_a_request_in_flight_is_never_idle() -> None:
    api = Api()
    api.hold = True
    clock, factory, open_one = clocked(api, LimitTuning(idle_timeout_s=10))
    proto, transport = open_one()
    proto.dataReceived(frame(StatusRequest(1)))
    clock.advance(100)
    assert not transport.disconnecting, "the node is still answering"
    api.release()
    assert reply_ids(transport) == [1]
    clock.advance(9.9)  # the idle clock restarts with the reply
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_a_connection_the_node_paused_is_not_idle() -> None:
    clock, factory, open_one = clocked(Api(), LimitTuning(idle_timeout_s=10))
    proto, transport = open_one()
    proto.pause_reading()  # an upload with its window full: the node is the one waiting
    clock.advance(50)
    assert not transport.disconnecting
    proto.resume_reading()
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_idle_timeout_over_tcp_closes_only_the_idle_connection(listener) -> None:
    start, conns = listener
    factory, address = start(LimitTuning(idle_timeout_s=0.3))
    idle = await connect(reactor, address)
    conns.append(idle)
    started = reactor.seconds()
    await wait_for(lambda: not idle.connected, "the idle connection closed")
    assert reactor.seconds() - started >= 0.25
    fresh = await connect(reactor, address)
    conns.append(fresh)
    assert isinstance(await status(fresh), StatusReply)


# -- requests in flight ------------------------------------------------------------------

def test_past_the_in_flight_limit_reading_pauses_until_one_finishes() -> None:
    api = Api()
    api.hold = True
    clock, factory, open_one = clocked(api, LimitTuning(max_requests_in_flight=2))
    proto, transport = open_one()
    other, other_transport = open_one()
    proto.dataReceived(b"".join(frame(StatusRequest(i)) for i in (1, 2, 3, 4)))
    assert api.calls == 2 and proto.in_flight == 2, "the third frame waits in the socket"
    assert transport.producerState == "paused"

    # Another connection is served meanwhile.
    api.hold = False
    other.dataReceived(frame(StatusRequest(9)))
    assert api.calls == 3 and other_transport.value()
    api.hold = True

    api.release()  # request 1 answered: request 3 is read
    assert api.calls == 4 and proto.in_flight == 2
    assert transport.producerState == "paused"
    api.release()  # request 2: request 4 is read
    assert api.calls == 5 and proto.in_flight == 2
    api.release()
    assert proto.in_flight == 1 and transport.producerState == "producing"
    api.release()
    assert proto.in_flight == 0
    assert sorted(reply_ids(transport)) == [1, 2, 3, 4]
    assert not transport.disconnecting


def test_the_in_flight_limit_counts_only_requests_still_being_handled() -> None:
    clock, factory, open_one = clocked(Api(), LimitTuning(max_requests_in_flight=1))
    proto, transport = open_one()
    proto.dataReceived(b"".join(frame(StatusRequest(i)) for i in range(1, 50)))
    assert proto.in_flight == 0 and transport.producerState == "producing"
    assert isinstance(proto, ClientConnection)


# -- uploads per connection --------------------------------------------------------------

def test_uploads_past_the_limit_are_refused_and_others_still_upload(tmp_path) -> None:
    service, fsm, store = make(tmp_path, limits=LimitTuning(max_uploads_per_connection=2))
    greedy, other = Conn(), Conn()
    service.put_start(PutStart(1, "/a", 5, 1), greedy)
    service.put_start(PutStart(2, "/b", 5, 2), greedy)
    with pytest.raises(RequestError) as refused:
        service.put_start(PutStart(3, "/c", 5, 3), greedy)
    assert refused.value.code == ErrorCode.LIMIT_EXCEEDED
    assert "max_uploads_per_connection" in str(refused.value)
    assert len(service._uploads) == 2

    # Another connection is not affected.
    service.put_start(PutStart(1, "/d", 6, 1), other)
    data = b"hello"
    service.put_data(PutData(1, data), other)
    done = service.put_end(PutEnd(1, len(data), hashlib.sha256(data).hexdigest()), other)
    assert done.called

    # An upload that ends frees its slot.
    service.put_data(PutData(1, data), greedy)
    service.put_end(PutEnd(1, len(data), hashlib.sha256(data).hexdigest()), greedy)
    service.put_start(PutStart(4, "/e", 5, 4), greedy)
    assert len(service._uploads) == 2


# -- proposal limit --------------------------------------------------------------------

def test_a_proposal_over_the_limit_is_answered_limit_exceeded() -> None:
    from storg.raft.errors import ProposalTooLarge

    class TooBig(Api):
        def status(self, request, conn):
            raise ProposalTooLarge(5_000_000, 4_194_304)

    clock, factory, open_one = clocked(TooBig(), LimitTuning())
    proto, transport = open_one()
    proto.dataReceived(frame(StatusRequest(3)))
    (length,) = struct.unpack(">I", transport.value()[:4])
    reply = CODEC.decode(transport.value()[4:4 + length])
    assert reply.request_id == 3 and reply.code == ErrorCode.LIMIT_EXCEEDED
    assert "max_proposal_bytes" in reply.message
    assert not transport.disconnecting


# -- the client library and a full node ----------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_client_library_moves_on_from_a_full_node_and_says_so_when_all_are(listener) -> None:
    from storg.client.api import StorgClient

    start, conns = listener
    full, full_address = start(LimitTuning(max_client_connections=1))
    free, free_address = start(LimitTuning())
    conns.append(await connect(reactor, full_address))
    await wait_for(lambda: len(full.connections) == 1, "the full node's one connection")

    client = StorgClient([full_address, free_address], reactor=reactor, timeout=10)
    try:
        reply = await client.call_leader(StatusRequest)
        assert isinstance(reply, StatusReply), "served by the node with room"
        assert full.refused == 1
    finally:
        client.close()

    only_full = StorgClient([full_address], reactor=reactor, timeout=10)
    started = reactor.seconds()
    try:
        with pytest.raises(LimitExceeded, match="max_client_connections"):
            await only_full.call_leader(StatusRequest)
    finally:
        only_full.close()
    assert reactor.seconds() - started < 5, "at once, not after the timeout"
