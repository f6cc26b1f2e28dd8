"""The peer port on its own terms (no TLS): what a refusal reveals, whom it records, who keeps a link.

Regressions for the issue "Let no one in":

* a Hello of another cluster was answered with our cluster id in the reason;
* a refused instance was answered with the instance id we trust for that member;
* any node id was recorded in peer_instances.json, member or not;
* a second Hello claiming n1 with n1's instance id made us drop the real,
  healthy connection of n1.

Real loopback TCP, as in test_peer.py.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from storg.config import Address, Member
from storg.raft.types import Message, MessageType
from storg.server.peer import PROTOCOL_VERSION, PeerTransport
from storg.server.peer_instances import KNOWN_INSTANCES_FILE, KnownInstances
from storg.wire.codec import CODEC
from storg.wire.messages import Hello, HelloRefused

CLUSTER = "secret-cluster-id"


async def wait_for(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Node:
    def __init__(self, node_id: str, accept_peer=None) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.transport = PeerTransport(node_id, CLUSTER, f"{node_id}-instance", {}, "127.0.0.1",
                                       self.received.append, accept_peer=accept_peer,
                                       rng=random.Random(7))
        self.port = reactor.listenTCP(0, self.transport.server_factory, interface="127.0.0.1")
        self.address = Address("127.0.0.1", self.port.getHost().port)

    async def close(self) -> None:
        await self.transport.stop()
        await self.port.stopListening()


class Raw(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.is_closed = True
        self.lost.callback(None)

    def frames(self) -> list[object]:
        out, pos = [], 0
        while pos + 4 <= len(self.received):
            (n,) = struct.unpack_from("!I", self.received, pos)
            out.append(CODEC.decode(self.received[pos + 4:pos + 4 + n]))
            pos += 4 + n
        return out


def frame(obj: object) -> bytes:
    body = CODEC.encode(obj)
    return struct.pack("!I", len(body)) + body


async def hello_to(node: Node, hello: Hello) -> Raw:
    raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", node.address.port), Raw())
    raw.transport.write(frame(hello))
    return raw


def ping(frm: str, to: str, index: int) -> Message:
    return Message(MessageType.HEARTBEAT, frm, to, term=1, commit=index)


@pytest_twisted.ensureDeferred
async def test_a_refusal_of_another_cluster_never_names_our_cluster_id() -> None:
    n1 = Node("n1")
    try:
        raw = await hello_to(n1, Hello(PROTOCOL_VERSION, "guess", "n2", "x"))
        await raw.lost
        (refused,) = raw.frames()
        assert isinstance(refused, HelloRefused)
        assert CLUSTER not in refused.reason and "another cluster" in refused.reason
    finally:
        await n1.close()


MEMBERS = {"n1": Member(Address("127.0.0.1", 7001), Address("127.0.0.1", 8001)),
           "n2": Member(Address("127.0.0.1", 7002), Address("127.0.0.1", 8002))}


def run_now(fn, *args) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args)


def test_a_non_member_is_refused_and_not_recorded(tmp_path: Path) -> None:
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now)
    reason = known.check("n9", "stranger")
    assert reason is not None and "not a member" in reason
    assert known.known() == {} and not (tmp_path / KNOWN_INSTANCES_FILE).exists()
    # Claiming the id first does not lock out the real node once it is added.
    members = dict(MEMBERS, n9=Member(Address("127.0.0.1", 7009), Address("127.0.0.1", 8009)))
    later = KnownInstances.load(tmp_path, lambda: members, run_in_thread=run_now)
    assert later.check("n9", "real-n9") is None
    assert later.known() == {"n9": "real-n9"}


def test_a_refused_instance_is_not_told_the_instance_id_we_trust(tmp_path: Path) -> None:
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now)
    assert known.check("n2", "the-real-n2") is None
    reason = known.check("n2", "guess")
    assert reason is not None and "the-real-n2" not in reason


@pytest_twisted.ensureDeferred
async def test_an_impostor_cannot_displace_a_healthy_connection_but_a_silent_one_is_replaced() -> None:
    n1, n2 = Node("n1"), Node("n2")
    try:
        n1.transport.set_peers({"n2": n2.address})
        await wait_for(lambda: n1.transport.connected_peers() == {"n2"}, "n1's link to n2")
        assert n1.transport.send(ping("n1", "n2", 1))
        await wait_for(lambda: n2.received, "first delivery")
        # The impostor knows the cluster id, n1's id and its instance id.
        impostor = await hello_to(n2, Hello(PROTOCOL_VERSION, CLUSTER, "n1", "n1-instance"))
        await impostor.lost
        (refused,) = impostor.frames()
        assert isinstance(refused, HelloRefused) and "already connected" in refused.reason
        # The real link is untouched and still delivers.
        assert n1.transport.connected_peers() == {"n2"} and n2.transport.inbound_peers() == {"n1"}
        assert n1.transport.send(ping("n1", "n2", 2))
        await wait_for(lambda: len(n2.received) == 2, "delivery after the impostor")
        # A connection silent for longer than the grace (a peer gone without a FIN) is replaced.
        n2.transport.established_grace = 0.2
        await deferLater(reactor, 0.3, lambda: None)
        newcomer = await hello_to(n2, Hello(PROTOCOL_VERSION, CLUSTER, "n1", "n1-instance"))
        await wait_for(lambda: newcomer.frames(), "an answer to the newcomer")
        assert isinstance(newcomer.frames()[0], Hello)
        newcomer.transport.loseConnection()
    finally:
        await n1.close()
        await n2.close()
