"""PeerTransport over real loopback TCP: handshake, traffic, refusals, bad bytes, reconnects."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from storg.config import Address
from storg.raft.types import Entry, Message, MessageType
from storg.server.peer import (
    CONNECTED,
    LOST,
    PROTOCOL_VERSION,
    REFUSED,
    PeerTransport,
)
from storg.wire.codec import CODEC, MAX_FRAME_BYTES
from storg.wire.messages import Hello, HelloRefused

CLUSTER = "c0ffee"


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the reactor until it holds, or fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Node:
    """A PeerTransport with its listener on an OS-chosen loopback port."""

    def __init__(self, node_id: str, cluster_id: str = CLUSTER, *, instance_id: str | None = None,
                 bind_host: str = "127.0.0.1", accept_peer=None, port: int = 0,
                 transport_class: type[PeerTransport] = PeerTransport) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.events: list[tuple[str, str]] = []
        self.transport = transport_class(
            node_id, cluster_id, instance_id or f"{node_id}-instance", {}, bind_host,
            self.received.append, on_peer_event=lambda p, e: self.events.append((p, e)),
            accept_peer=accept_peer, rng=random.Random(7))
        self.port = reactor.listenTCP(port, self.transport.server_factory, interface="127.0.0.1")
        self.address = Address("127.0.0.1", self.port.getHost().port)

    def connect_to(self, *others: Node) -> None:
        self.transport.set_peers({o.node_id: o.address for o in others})

    async def close(self) -> None:
        await self.transport.stop()
        if self.port.connected:
            await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def nodes():
    made: list[Node] = []

    def make(*args, **kwargs) -> Node:
        node = Node(*args, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


@pytest.fixture
def warnings():
    """Formatted log lines at warn level or above, collected during the test."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def msg(frm: str, to: str, index: int = 1, data: bytes = b"") -> Message:
    entries = (Entry(3, index, data=data),) if data else ()
    return Message(MessageType.APPEND, frm, to, term=3, index=index, entries=entries, commit=index)


def frame(obj: object) -> bytes:
    body = CODEC.encode(obj)
    return struct.pack("!I", len(body)) + body


class Raw(Protocol):
    """A hand-driven client that sends whatever bytes a test gives it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = defer.Deferred()
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.is_closed = True
        self.lost.callback(None)


async def raw_connect(node: Node) -> Raw:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", node.address.port)
    return await connectProtocol(endpoint, Raw())


def good_hello(node_id: str = "rogue", cluster_id: str = CLUSTER) -> Hello:
    return Hello(PROTOCOL_VERSION, cluster_id, node_id, f"{node_id}-instance")


@pytest_twisted.ensureDeferred
async def test_messages_flow_both_ways(nodes) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    n1.connect_to(n2)
    n2.connect_to(n1)
    await wait_for(lambda: n1.transport.connected_peers() == {"n2"}
                   and n2.transport.connected_peers() == {"n1"}, "both links")
    sent = msg("n1", "n2", 5, b"payload")
    assert n1.transport.send(sent)
    assert n2.transport.send(msg("n2", "n1", 6))
    await wait_for(lambda: n1.received and n2.received, "delivery")
    assert n2.received == [sent]
    assert n1.received == [msg("n2", "n1", 6)]
    assert ("n2", CONNECTED) in n1.events and ("n1", CONNECTED) in n2.events
    assert n1.transport.inbound_peers() == {"n2"}

    # Order is kept within one direction, including large messages.
    batch = [msg("n1", "n2", i, bytes([i]) * (i * 10_000)) for i in range(1, 40)]
    assert all(n1.transport.send(m) for m in batch)
    await wait_for(lambda: len(n2.received) == 1 + len(batch), "batch")
    assert n2.received[1:] == batch


@pytest_twisted.ensureDeferred
async def test_send_drops_when_not_connected(nodes) -> None:
    n1 = nodes("n1")
    assert n1.transport.send(msg("n1", "n9")) is False  # not a peer at all
    # A peer whose address nobody listens on: dropped, and retried in the background.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = Address("127.0.0.1", s.getsockname()[1])
    n1.transport.set_peers({"n2": dead})
    assert n1.transport.send(msg("n1", "n2")) is False
    assert n1.transport.connected_peers() == set()
    assert n1.transport.peers() == {"n2": dead}


def can_bind(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_outgoing_connection_comes_from_bind_host(nodes) -> None:
    bind_host = "127.0.0.2" if can_bind("127.0.0.2") else "127.0.0.1"
    n1, n2 = nodes("n1", bind_host=bind_host), nodes("n2")
    n1.connect_to(n2)
    await wait_for(lambda: n2.transport.inbound_peers() == {"n1"}, "n1 connected to n2")
    (inbound,) = n2.transport._inbound_by_peer.values()
    assert inbound.transport.getPeer().host == bind_host
    (outgoing,) = n1.transport._outbound
    assert outgoing.transport.getHost().host == bind_host


@pytest_twisted.ensureDeferred
async def test_other_cluster_is_refused_and_listener_keeps_serving(nodes, warnings) -> None:
    n1 = nodes("n1")
    stranger = nodes("x9", cluster_id="another-cluster")
    n2 = nodes("n2")
    stranger.connect_to(n1)
    n2.connect_to(n1)
    await wait_for(lambda: ("n1", REFUSED) in stranger.events and ("x9", REFUSED) in n1.events, "refusal")
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}, "good peer")
    assert stranger.transport.send(msg("x9", "n1")) is False
    assert n2.transport.send(msg("n2", "n1"))
    await wait_for(lambda: n1.received, "delivery from the good peer")
    assert [m.frm for m in n1.received] == ["n2"]
    refusals = [line for line in warnings if "another-cluster" in line]
    # One line on each side, not one per retry.
    assert any(line.startswith("refused x9") for line in refusals)
    assert any("refused us" in line for line in refusals)
    assert len(refusals) == 2, refusals


@pytest_twisted.ensureDeferred
async def test_accept_peer_can_refuse_a_changed_instance(nodes, warnings) -> None:
    known = {"n2": "n2-old"}

    def accept(hello: Hello) -> str | None:
        if known.get(hello.node_id, hello.instance_id) != hello.instance_id:
            return f"{hello.node_id} came back with an empty data_dir; run storgctl member remove {hello.node_id}"
        return None

    n1 = nodes("n1", accept_peer=accept)
    n2 = nodes("n2", instance_id="n2-new")
    n2.connect_to(n1)
    n1.connect_to(n2)
    await wait_for(lambda: ("n1", REFUSED) in n2.events and ("n2", REFUSED) in n1.events, "refusal")
    assert n1.transport.connected_peers() == set() and n2.transport.connected_peers() == set()
    assert any("storgctl member remove n2" in line and "refused us" in line for line in warnings)
    known["n2"] = "n2-new"  # the operator fixed it
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}
                   and n1.transport.connected_peers() == {"n2"}, "links after the fix", timeout=8)


@pytest_twisted.ensureDeferred
async def test_wrong_node_at_the_address_is_refused(nodes) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    n1.transport.set_peers({"n3": n2.address})
    await wait_for(lambda: ("n3", REFUSED) in n1.events, "refusal")
    assert n1.transport.connected_peers() == set()


BAD_STREAMS = {
    "garbage": b"\x00\x00\x00\x05hello",
    "oversized length": struct.pack("!I", MAX_FRAME_BYTES + 1),
    "huge length": b"\xff\xff\xff\xff" + b"x" * 100,
    "unknown message type": struct.pack("!I", 2) + bytes([1, 200]),
    "raft message before hello": frame(msg("rogue", "n1")),
    "hello twice": frame(good_hello()) + frame(good_hello()),
    "garbage after hello": frame(good_hello()) + b"\x00\x00\x00\x03abc",
    "forged sender": frame(good_hello()) + frame(msg("n2", "n1")),
    "message for another node": frame(good_hello()) + frame(msg("rogue", "n7")),
    "hello from ourselves": frame(good_hello("n1")),
    "bad protocol version": frame(Hello(PROTOCOL_VERSION + 1, CLUSTER, "rogue", "i")),
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
@pytest_twisted.ensureDeferred
async def test_bad_bytes_close_only_that_connection(nodes, warnings, case: str) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    n2.connect_to(n1)
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}, "good peer")
    raw = await raw_connect(n1)
    raw.transport.write(BAD_STREAMS[case])
    await wait_for(lambda: raw.is_closed, "the server to close the bad connection")
    assert n1.received == []
    assert len(warnings) == 1, warnings  # one line for the bad connection, nothing else
    # The good peer's connection survived, and the listener still accepts.
    assert n2.transport.connected_peers() == {"n1"}
    assert n2.transport.send(msg("n2", "n1", 9))
    await wait_for(lambda: n1.received, "delivery from the good peer")
    assert n1.received == [msg("n2", "n1", 9)]


@pytest_twisted.ensureDeferred
async def test_truncated_frame_then_close(nodes) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    raw = await raw_connect(n1)
    raw.transport.write(frame(good_hello())[:-1] + b"")
    raw.transport.write(frame(good_hello()) + frame(msg("rogue", "n1", data=b"x" * 1000))[:-10])
    raw.transport.loseConnection()
    await raw.lost
    await wait_for(lambda: not n1.transport._inbound, "server side to notice")
    assert n1.received == []
    n2.connect_to(n1)
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}, "good peer")
    assert n2.transport.send(msg("n2", "n1"))
    await wait_for(lambda: n1.received, "delivery")


@pytest_twisted.ensureDeferred
async def test_handshake_answer_and_silent_client_timeout(nodes) -> None:
    class Impatient(PeerTransport):
        handshake_timeout = 0.2

    n1 = nodes("n1", transport_class=Impatient)
    talker = await raw_connect(n1)
    talker.transport.write(frame(good_hello("n5")))
    await wait_for(lambda: len(talker.received) >= 4, "hello answer")
    (length,) = struct.unpack("!I", talker.received[:4])
    await wait_for(lambda: len(talker.received) >= 4 + length, "hello answer body")
    answer = CODEC.decode(talker.received[4:4 + length])
    assert answer == Hello(PROTOCOL_VERSION, CLUSTER, "n1", "n1-instance")
    silent = await raw_connect(n1)
    await wait_for(lambda: silent.is_closed, "handshake timeout")
    assert not talker.is_closed


@pytest_twisted.ensureDeferred
async def test_refusal_is_explained_to_the_peer(nodes) -> None:
    n1 = nodes("n1")
    raw = await raw_connect(n1)
    raw.transport.write(frame(good_hello(cluster_id="elsewhere")))
    await raw.lost
    (length,) = struct.unpack("!I", raw.received[:4])
    refused = CODEC.decode(raw.received[4:4 + length])
    assert isinstance(refused, HelloRefused) and "elsewhere" in refused.reason


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_listener_restarts(nodes) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    n1.connect_to(n2)
    await wait_for(lambda: n1.transport.connected_peers() == {"n2"}, "first link")
    port = n2.address.port
    await n2.close()
    await wait_for(lambda: ("n2", LOST) in n1.events, "loss noticed")
    assert n1.transport.send(msg("n1", "n2")) is False
    n2b = nodes("n2", port=port)
    await wait_for(lambda: n1.transport.connected_peers() == {"n2"}, "reconnect", timeout=8)
    assert n1.events.count(("n2", CONNECTED)) == 2
    assert n1.transport.send(msg("n1", "n2", 4))
    await wait_for(lambda: n2b.received, "delivery after reconnect")


@pytest_twisted.ensureDeferred
async def test_set_peers_drops_removed_and_adds_new(nodes) -> None:
    n1, n2, n3 = nodes("n1"), nodes("n2"), nodes("n3")
    n1.connect_to(n2)
    await wait_for(lambda: n1.transport.connected_peers() == {"n2"}, "n2 link")
    n1.transport.set_peers({"n3": n3.address, "n1": n1.address})  # our own id is ignored
    assert n1.transport.peers() == {"n3": n3.address}
    await wait_for(lambda: n1.transport.connected_peers() == {"n3"}, "n3 link")
    await wait_for(lambda: n2.transport.inbound_peers() == set(), "n2 sees n1 leave")
    assert n1.transport.send(msg("n1", "n2")) is False


@pytest_twisted.ensureDeferred
async def test_stop_closes_everything_and_stops_reconnecting(nodes) -> None:
    n1, n2 = nodes("n1"), nodes("n2")
    n1.connect_to(n2)
    n2.connect_to(n1)
    await wait_for(lambda: n1.transport.connected_peers() == {"n2"}
                   and n2.transport.connected_peers() == {"n1"}, "links")
    await n1.transport.stop()
    assert n1.transport.connected_peers() == set()
    assert not n1.transport._inbound and not n1.transport._outbound
    await wait_for(lambda: n2.transport.inbound_peers() == set(), "n2 sees n1 go")
    # n2 keeps trying, but n1's listener no longer builds peer protocols.
    assert n2.transport.send(msg("n2", "n1")) is False
    assert n1.received == []


@pytest_twisted.ensureDeferred
async def test_send_buffer_stays_bounded_while_the_peer_does_not_read(nodes) -> None:
    class SmallWindow(PeerTransport):
        send_buffer_limit = 1024 * 1024

    n1, n2 = nodes("n1", transport_class=SmallWindow), nodes("n2")
    n1.connect_to(n2)
    await wait_for(lambda: n2.transport.inbound_peers() == {"n1"}
                   and n1.transport.connected_peers() == {"n2"}, "link")
    (inbound,) = n2.transport._inbound_by_peer.values()
    inbound.transport.pauseProducing()  # n2 stops reading: kernel buffers fill, then ours
    data = b"d" * (256 * 1024)
    accepted = 0
    for i in range(1, 1000):
        if not n1.transport.send(msg("n1", "n2", i, data)):
            break
        accepted += 1
        if i % 8 == 0:
            # Let the reactor move bytes into the kernel, as it would between Raft ticks.
            await deferLater(reactor, 0.001, lambda: None)
    else:
        raise AssertionError("send never reported a full buffer")
    (outgoing,) = n1.transport._outbound
    assert outgoing.window.paused
    assert outgoing.window.queued_while_paused <= SmallWindow.send_buffer_limit
    inbound.transport.resumeProducing()
    await wait_for(lambda: len(n2.received) == accepted, "everything accepted is delivered", timeout=10)
    assert [m.index for m in n2.received] == list(range(1, accepted + 1))
    await wait_for(lambda: not outgoing.window.paused, "buffer drained")
    assert n1.transport.send(msg("n1", "n2", accepted + 1))


class Babbler(Protocol):
    """Not a storg node: answers every connection with an HTTP error."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_wrong_service_at_a_peer_address_is_logged_once(nodes, warnings) -> None:
    from twisted.internet.protocol import ServerFactory

    class Fast(PeerTransport):
        max_backoff = 0.05

    factory = ServerFactory.forProtocol(Babbler)
    factory.connections = 0
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        n1 = nodes("n1", transport_class=Fast)
        n1.transport.set_peers({"n2": Address("127.0.0.1", port.getHost().port)})
        await wait_for(lambda: factory.connections >= 3, "several attempts")
        assert n1.transport.connected_peers() == set()
        assert len(warnings) == 1, warnings
        assert "peer connection to n2" in warnings[0] and "exceeds the limit" in warnings[0]
    finally:
        await port.stopListening()
