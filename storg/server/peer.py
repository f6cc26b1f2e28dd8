"""The Raft peer transport: framed, handshaken TCP connections between nodes.

Shape of the traffic
--------------------
Each node keeps exactly one *outgoing* connection to every other member
and sends its own Raft messages only on it; it *receives* the others'
messages on the connections they opened to it.  Every direction of traffic
therefore rides on the sender's outgoing connection: there is no race over
which of two simultaneous connections wins, a reconnect is the sender's
business alone, and "can I send to X" is one boolean per peer.

Outgoing connections are made from the host of ``peer_listen``
(``bindAddress``) so that firewall rules and fault tests can tell nodes
apart by source address.

Handshake
---------
The connecting side sends ``Hello(version, cluster_id, node_id,
instance_id)``.  The listening side checks the version, the cluster id,
that the peer is not itself, and finally asks the node (``accept_peer``),
which refuses a peer whose instance id changed (it came back with an empty
data_dir, having forgotten its votes).  It answers with its own ``Hello``,
which the connecting side checks the same way (plus: the node at that
address is the one it meant to reach), or with ``HelloRefused(reason)``
and a close.  No Raft message flows before both checks pass.

TLS
---
With the node's credentials (``tls``), every link is TLS: the listener's
endpoint demands a certificate from the cluster's CA, the Hello must name
the node that certificate names (:meth:`PeerTransport._check_certificate`),
and a link dialing peer X demands X's certificate.  A handshake that fails
is logged once per source and reason.

One connection per peer, and who keeps it
-----------------------------------------
With TLS a newcomer proved who it is, so it replaces the old connection
at once.  Without TLS nothing proves that a Hello naming ``n1`` with n1's instance
id comes from n1.  So an established connection that is alive wins: a
second inbound connection claiming the id of a peer whose connection
delivered a frame within the last ``established_grace`` seconds is refused
("already connected"), and the old one is kept.  An impostor therefore
cannot displace a healthy link (a leader's, or a follower's to its
leader: both carry a frame every heartbeat).  A connection that has been
silent for longer (a follower's link to another follower, a half-open
connection whose peer died without a FIN) is replaced by the newcomer, as
before, so a restarted peer is never locked out: it waits at most
``established_grace`` plus one retry.  A peer that really restarted closed
its old connection (the kernel sends the FIN), so normally it is gone
before the new Hello arrives.  What an impostor can still do on a
plain-TCP cluster (loopback only, or ``tls: off``) is take over a link that is
silent, or one whose peer is down; the core's membership filter and the
instance ids limit what it can say there.

Untrusted bytes
---------------
After the handshake every frame on an incoming connection must decode to a
Raft :class:`Message` from the handshaken node, addressed to us.  Anything
else (garbage, an unknown type, an oversized length prefix, a forged
sender) closes that connection only, with one log line; the listener keeps
serving everyone else.

Bounded memory
--------------
Transports buffer without limit.  Each outgoing connection registers a
push producer; when the transport says its buffer is full, at most
``send_buffer_limit`` more bytes are queued and further messages are
dropped (Raft retries) until the buffer drains.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.config import NODE_ID_RE, Address, LimitTuning
from storg.net.flow import WriteWindow
from storg.net.framing import FrameReceiver, Transport, describe_address
from storg.net.ratelimit import RateLimitedLog
from storg.net.tls import describe_tls_failure, is_tls_failure, peer_identity
from storg.net.tls_stream import TLSStreamFactory
from storg.raft.types import Message
from storg.server.peer_stats import PeerStats
from storg.wire.codec import CODEC
from storg.wire.messages import Hello, HelloRefused
from storg.wire.records import CodecError

PROTOCOL_VERSION = 1
"""Version of the peer protocol (handshake and message flow), checked in Hello."""

CONNECTED = "connected"
LOST = "lost"
REFUSED = "refused"
"""Peer events reported to ``on_peer_event(peer_id, event)``."""

_HEADER = struct.Struct("!I")

log = Logger(namespace="storg.peer")

PeerEventCallback = Callable[[str, str], None]
AcceptPeer = Callable[[Hello], "str | None"]


class _Identity:
    """What this node says about itself in a Hello, and what it demands of others."""

    __slots__ = ("node_id", "cluster_id", "instance_id")

    def __init__(self, node_id: str, cluster_id: str, instance_id: str) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.instance_id = instance_id

    def hello(self) -> Hello:
        return Hello(PROTOCOL_VERSION, self.cluster_id, self.node_id, self.instance_id)

    def check(self, hello: Hello) -> str | None:
        """The reason to refuse ``hello``, or None; the checks both sides make."""
        if hello.version != PROTOCOL_VERSION:
            return f"peer protocol version {hello.version} is not {PROTOCOL_VERSION}"
        if hello.cluster_id != self.cluster_id:
            # Never our own id: whoever can read a refusal must not learn how to pass.
            return f"cluster id {_one_line(hello.cluster_id, 80)!r} belongs to another cluster"
        if not NODE_ID_RE.fullmatch(hello.node_id):
            return f"node id {_one_line(hello.node_id, 80)!r} is not 1-64 of [a-z0-9_-]"
        if hello.node_id == self.node_id:
            return f"node id {hello.node_id} is our own"
        return None


def _peer_text(transport: Any) -> str:
    try:
        return describe_address(transport.getPeer())
    except Exception:  # a transport already torn down has no address
        return "?"


def _is_tls_failure(reason: object) -> bool:
    """Whether a connection ended because of TLS (a refused certificate, an alert), not TCP."""
    return isinstance(reason, Failure) and is_tls_failure(reason)


def _tls_reason(transport: Any, reason: object) -> str:
    return describe_tls_failure(transport, reason if isinstance(reason, Failure) else None)


def _one_line(text: str, limit: int = 300) -> str:
    """Untrusted text from a peer, made safe for a one-line log entry."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


class _PeerProtocol(FrameReceiver):
    """What both directions share: one decoder, one way to give up on a connection."""

    # A factory's protocol is connected (makeConnection) as soon as it is
    # built, before any method here runs: the transport is always there.
    transport: Transport
    peer_id: str | None = None
    _timeout: Any = None
    # Set by the subclasses (class attribute or __init__) and by connectionMade:
    direction: str
    reactor: Any
    handshake_timeout: float
    closed: defer.Deferred[None]

    def connectionMade(self) -> None:
        self.closed = defer.Deferred()
        # Raft messages are small and latency-bound: no Nagle delay.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._timeout = self.reactor.callLater(self.handshake_timeout, self._handshake_timed_out)

    def connectionLost(self, reason: object = None) -> None:
        self._cancel_timeout()
        super().connectionLost(reason)
        self.closed.callback(None)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _handshake_timed_out(self) -> None:
        self._timeout = None
        self.violation(f"no handshake within {self.handshake_timeout:g} s")

    def send_object(self, obj: object) -> None:
        self.sendString(CODEC.encode(obj))

    def decode(self, data: bytes) -> object | None:
        """Decode a frame, or close the connection and return None."""
        try:
            return CODEC.decode(data)
        except CodecError as exc:
            self.violation(f"undecodable frame ({exc})")
            return None

    def violation(self, what: str) -> None:
        """The peer broke the protocol: one (rate-limited) log line, close this connection only."""
        if self.transport.disconnecting:
            return
        self._drops().emit("peer connections closed for a protocol violation",
                           "peer connection {direction} {who} at {addr} closed: {what}",
                           direction=self.direction, who=self.peer_id or "(unknown)",
                           addr=_peer_text(self.transport), what=what)
        self.close_connection()

    def _drops(self) -> RateLimitedLog:
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:
        self.violation(f"frame of {length} bytes exceeds the limit of {self.MAX_LENGTH}")

    def refuse(self, reason: str) -> None:
        """Tell the peer why, then close (it logs the reason on its side)."""
        try:
            self.send_object(HelloRefused(reason))
        except CodecError:
            pass
        self.close_connection()


class PeerServerProtocol(_PeerProtocol):
    """An incoming connection: a peer delivering its messages to us."""

    direction = "from"

    def __init__(self, factory: PeerServerFactory) -> None:
        self.owner = factory.owner
        self.reactor = factory.owner.reactor
        self.handshake_timeout = factory.owner.handshake_timeout
        self.last_frame = 0.0
        """reactor.seconds() of the last frame received (the handshake counts)."""
        self.connected_at = 0
        """Order of arrival among inbound connections (the oldest unproven one is evicted)."""

    def _drops(self) -> RateLimitedLog:
        return self.owner.drops

    def alive(self) -> bool:
        """Connected and heard from within the owner's ``established_grace``."""
        return (not self.transport.disconnecting
                and self.reactor.seconds() - self.last_frame < self.owner.established_grace)

    def connectionMade(self) -> None:
        self.connected_at = next(self.owner._arrivals)
        super().connectionMade()
        self.owner._inbound.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.owner._inbound_lost(self)
        if self.peer_id is None and self.owner.tls is not None and _is_tls_failure(reason):
            who = _peer_text(self.transport)
            why = _tls_reason(self.transport, reason)
            self.owner._refused(f"tls:{who.rsplit(':', 1)[0]}", f"refused a TLS connection from {who}: {why}", why)
        super().connectionLost(reason)

    def stringReceived(self, data: bytes) -> None:
        self.last_frame = self.reactor.seconds()
        obj = self.decode(data)
        if obj is None:
            return
        if self.peer_id is None:
            self._handshake(obj)
            return
        if type(obj) is HelloRefused:
            # Our reply Hello was refused by the connecting side (for
            # instance our instance id changed): its reason is the operator's fix.
            self.owner._refused(self.peer_id, f"peer {self.peer_id} refused us: {_one_line(obj.reason)}",
                                f"refused us: {obj.reason}")
            self.close_connection()
        elif type(obj) is not Message:
            self.violation(f"expected a Raft message, got {type(obj).__name__}")
        elif obj.frm != self.peer_id:
            self.violation(f"message claims to be from {obj.frm!r}")
        elif obj.to != self.owner.node_id:
            self.violation(f"message addressed to {obj.to!r}, not to us")
        else:
            self.owner.stats.received(obj, len(data))
            self.owner._deliver(obj)

    def _handshake(self, obj: object) -> None:
        if type(obj) is not Hello:
            self.violation(f"expected Hello, got {type(obj).__name__}")
            return
        reason = self.owner._check_certificate(obj, self.transport)
        if reason is None:
            reason = self.owner._check_hello(obj, inbound=self)
        if reason is not None:
            who = _one_line(obj.node_id, 64)
            self.owner._refused(who, f"refused {who} from {_peer_text(self.transport)}: {reason}", reason)
            self.refuse(reason)
            return
        self._cancel_timeout()
        self.peer_id = obj.node_id
        self.owner._inbound_ready(self)
        self.send_object(self.owner.identity.hello())


class PeerServerFactory(ServerFactory):
    """Builds protocols for the peer listener.

    Kept apart from how it is listened on: ``reactor.listenTCP(port,
    factory, interface=host)`` today, a TLS endpoint (or
    ``TLSStreamFactory`` wrapping this factory) later.
    """

    noisy = False

    def __init__(self, owner: PeerTransport) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> PeerServerProtocol | None:
        owner = self.owner
        if owner._stopped:
            return None  # closes the connection at once
        if len(owner._inbound) >= owner.max_connections and not owner._evict_unhandshaken():
            # Closed at once, before a byte is read: members keep one connection
            # each, so this is a flood (or a leak), and the log must say so, rarely.
            owner.refused_connections += 1
            owner.drops.emit("peer connection limit",
                             "refusing peer connection from {addr}: {limit} inbound connections "
                             "are open (limits.max_peer_connections)",
                             addr=describe_address(addr), limit=owner.max_connections)
            return None
        return PeerServerProtocol(self)


class PeerClientProtocol(_PeerProtocol):
    """Our outgoing connection to one peer: carries only our messages."""

    direction = "to"

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.peer_id = None
        self.expected = link.peer_id
        self.reactor = link.owner.reactor
        self.handshake_timeout = link.owner.handshake_timeout
        self.window = WriteWindow(limit=link.owner.send_buffer_limit)
        self.ready = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.link.owner._outbound.add(self)
        self.link.current = self
        self.transport.registerProducer(self.window, True)
        self.send_object(self.link.owner.identity.hello())

    def _drops(self) -> RateLimitedLog:
        return self.link.owner.drops

    def violation(self, what: str) -> None:
        # Logged through the link: a wrong service at a peer's address would
        # otherwise log one line per reconnect attempt.
        if self.transport.disconnecting:
            return
        self.link.protocol_error(f"peer connection to {self.expected} at {_peer_text(self.transport)} closed: {what}")
        self.close_connection()

    def close_connection(self) -> None:
        # A transport with a registered producer never finishes closing.  Unconditional:
        # over TLS the registration is held by the TCP transport under TLSStream, not by
        # the transport we see, and unregistering when nothing is registered does nothing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.link.owner._outbound.discard(self)
        if self.link.current is self:
            self.link.current = None
        self.link.connection_lost(self, reason)
        self.ready = False
        super().connectionLost(reason)

    def stringReceived(self, data: bytes) -> None:
        obj = self.decode(data)
        if obj is None:
            return
        if self.ready:
            self.violation(f"unexpected {type(obj).__name__} on our outgoing connection")
        elif type(obj) is HelloRefused:
            self.link.refused(f"{self.expected} at {_peer_text(self.transport)} refused us: {_one_line(obj.reason)}")
            self.close_connection()
        elif type(obj) is not Hello:
            self.violation(f"expected Hello, got {type(obj).__name__}")
        else:
            reason = self.link.owner._check_hello(obj, expected=self.expected)
            if reason is not None:
                who = _one_line(obj.node_id, 64)
                self.link.refused(f"refused {who} at {_peer_text(self.transport)}: {reason}")
                self.refuse(reason)
                return
            self._cancel_timeout()
            self.peer_id = obj.node_id
            self.ready = True
            self.link.handshaken(self)

    def send_frame(self, body: bytes) -> bool:
        size = _HEADER.size + len(body)
        if self.transport.disconnecting:
            return False
        if not self.window.admit(size):
            if not self.window.dropping:
                self.window.dropping = True
                log.warn("send buffer to peer {peer} is full; dropping messages until it drains",
                         peer=self.peer_id)
            return False
        # Two writes instead of header + body: no copy of a large body.
        self.transport.writeSequence((_HEADER.pack(len(body)), body))
        return True


class _LinkFactory(ClientFactory):
    """One connection attempt of a link; reports the outcome back to it."""

    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> PeerClientProtocol:
        return PeerClientProtocol(self.link)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.connect_failed(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.link.attempt_ended()


class _Link:
    """Keeps one outgoing connection to one peer alive, with capped backoff."""

    def __init__(self, owner: PeerTransport, peer_id: str, address: Address) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.address = address
        self.protocol: PeerClientProtocol | None = None  # set once handshaken
        self.current: PeerClientProtocol | None = None  # the connected protocol, handshaken or not
        self.connector: Any = None
        self.retry: Any = None
        self.failures = 0
        self.stopped = False
        self.last_problem: str | None = None

    def start(self) -> None:
        self.retry = None
        if self.stopped:
            return
        owner = self.owner
        bind = None if owner.bind_host is None else (owner.bind_host, 0)
        factory: Any = _LinkFactory(self)
        if owner.tls is not None:
            # The peer's certificate must name the node we mean to reach.
            factory = TLSStreamFactory(owner.tls.client(self.peer_id), factory, owner.reactor)
        self.connector = owner.reactor.connectTCP(
            self.address.host, self.address.port, factory,
            timeout=owner.connect_timeout, bindAddress=bind)

    def handshaken(self, protocol: PeerClientProtocol) -> None:
        self.protocol = protocol
        self.failures = 0
        self.last_problem = None
        log.info("connected to peer {peer} at {addr}", peer=self.peer_id, addr=self.address)
        self.owner._event(self.peer_id, CONNECTED)

    def connection_lost(self, protocol: PeerClientProtocol, reason: object = None) -> None:
        if protocol is self.protocol:
            self.protocol = None
            log.info("lost connection to peer {peer}", peer=self.peer_id)
            self.owner._event(self.peer_id, LOST)
        elif not self.stopped and self.owner.tls is not None and _is_tls_failure(reason):
            # Our check of its certificate, or its of ours: no retry will cure that soon.
            self.failures = max(self.failures, 32)
            self._problem(f"TLS with peer {self.peer_id} at {self.address} failed: "
                          f"{_tls_reason(protocol.transport, reason)}", warn=True)
        elif not self.stopped and self.last_problem is None:
            self._problem(f"connection to peer {self.peer_id} at {self.address} closed before the handshake")

    def refused(self, line: str) -> None:
        # A refusal will not cure itself in 50 ms: retry at the slowest pace.
        self.failures = max(self.failures, 32)
        self._problem(line, warn=True)
        self.owner.stats.refuse("outbound")
        self.owner._event(self.peer_id, REFUSED)

    def protocol_error(self, line: str) -> None:
        self.failures = max(self.failures, 32)
        self._problem(line, warn=True)

    def _problem(self, line: str, warn: bool = False) -> None:
        """Log why the link is down once per outage (and when the reason changes).

        A peer that is down is retried every second; one line per attempt
        would bury everything else in the log.
        """
        if line != self.last_problem:
            self.last_problem = line
            (log.warn if warn else log.info)("{line}", line=line)

    def connect_failed(self, reason: Failure) -> None:
        self.connector = None
        if not self.stopped:
            self._problem(f"cannot reach peer {self.peer_id} at {self.address}: {reason.getErrorMessage()}")
            self._schedule()

    def attempt_ended(self) -> None:
        self.connector = None
        if not self.stopped:
            self._schedule()

    def _schedule(self) -> None:
        self.retry = self.owner.reactor.callLater(self.owner._backoff(self.failures), self.start)
        self.failures += 1

    def stop(self) -> None:
        self.stopped = True
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None
        if self.current is not None:
            self.current.close_connection()
        elif self.connector is not None:
            self.connector.disconnect()


class PeerTransport:
    """Raft message transport between the members of one cluster.

    ``send`` never blocks and never queues without bound: a message to a
    peer that is not connected (or whose connection is backed up) is
    dropped and ``send`` returns False; Raft's own retries recover.
    Received messages are handed to ``on_message`` in arrival order per
    peer.

    ``peers`` maps the other members' ids to their peer addresses (our own
    id is ignored, so a whole member list can be passed).  ``bind_host`` is
    the host of our ``peer_listen``: outgoing connections come from it
    (None: let the OS choose).  ``accept_peer(hello)`` returns a reason to
    refuse a peer that passed the cluster checks (say, its instance id
    changed), or None.  ``on_peer_event(peer_id, event)`` hears
    ``connected`` / ``lost`` / ``refused``.  ``rng`` jitters the reconnect
    backoff so that nodes restarted together do not retry in lockstep.

    Listen with ``reactor.listenTCP(port, transport.server_factory,
    interface=host)`` (or any server endpoint); ``stop()`` closes every
    connection but leaves the listening port to its owner.
    """

    initial_backoff = 0.05
    max_backoff = 1.0
    connect_timeout = 2.0
    handshake_timeout = 5.0
    send_buffer_limit = 16 * 1024 * 1024
    established_grace = 3.0
    """An inbound connection that delivered a frame this recently is not replaced by a newcomer
    claiming the same node id (see the module docstring); several heartbeats, under one election."""

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        instance_id: str,
        peers: Mapping[str, Address],
        bind_host: str | None,
        on_message: Callable[[Message], None],
        reactor: Any = None,
        on_peer_event: PeerEventCallback | None = None,
        accept_peer: AcceptPeer | None = None,
        rng: random.Random | None = None,
        tls: Any = None,
        max_connections: int = LimitTuning().max_peer_connections,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor = reactor
        self.node_id = node_id
        self.identity = _Identity(node_id, cluster_id, instance_id)
        self.bind_host = bind_host
        self.on_message = on_message
        self.on_peer_event = on_peer_event
        self.accept_peer = accept_peer
        self.tls = tls
        """The node's :class:`~storg.net.credentials.TLSCredentials`, or None for plain TCP.

        With TLS a peer's node id is the one its certificate names: the
        listener (whose endpoint is TLS) checks the Hello against it, and a
        link's handshake demands the certificate of the node it dials."""
        self.rng = rng if rng is not None else random.Random()
        self.server_factory = PeerServerFactory(self)
        self.max_connections = max_connections
        """Inbound connections at once (handshaken or not); more are closed at once."""
        self.refused_connections = 0
        self.drops = RateLimitedLog(log, reactor)
        """Refused and dropped inbound connections: a few lines per reason and minute, then a count."""
        self._links: dict[str, _Link] = {}
        self._inbound: set[PeerServerProtocol] = set()
        self._arrivals = itertools.count(1)
        self._outbound: set[PeerClientProtocol] = set()
        self._inbound_by_peer: dict[str, PeerServerProtocol] = {}
        self._refusal_logged: dict[str, str] = {}
        self._stopped = False
        self.stats = PeerStats(reactor)
        """Bytes, drops, refusals and heartbeat round trips, for ``/metrics`` (reactor thread only)."""
        self.set_peers(peers)

    # -- public API ---------------------------------------------------------

    def send(self, msg: Message) -> bool:
        """Send ``msg`` to ``msg.to`` if its connection is up; False if dropped."""
        link = self._links.get(msg.to)
        if link is None or link.protocol is None:
            self.stats.drop(msg.to)
            return False
        try:
            body = CODEC.encode(msg)
        except CodecError as exc:
            log.error("cannot send {type} to {peer}: {exc}", type=msg.type.name, peer=msg.to, exc=exc)
            return False
        if not link.protocol.send_frame(body):
            self.stats.drop(msg.to)
            return False
        self.stats.sent(msg, len(body))
        return True

    def set_peers(self, peers: Mapping[str, Address]) -> None:
        """Follow a membership change: connect to new peers, drop removed ones."""
        if self._stopped:
            return
        wanted = {pid: addr for pid, addr in peers.items() if pid != self.node_id}
        for pid in list(self._links):
            link = self._links[pid]
            if wanted.get(pid) != link.address:
                link.stop()
                del self._links[pid]
                if pid not in wanted:
                    self.stats.forget(pid)
        for pid, addr in wanted.items():
            if pid not in self._links:
                link = self._links[pid] = _Link(self, pid, addr)
                link.start()

    def peers(self) -> dict[str, Address]:
        """The peers we keep connections to, with their addresses."""
        return {pid: link.address for pid, link in self._links.items()}

    def connected_peers(self) -> set[str]:
        """Peers whose outgoing connection is up and handshaken (``send`` can reach them)."""
        return {pid for pid, link in self._links.items() if link.protocol is not None}

    def inbound_peers(self) -> set[str]:
        """Peers with a handshaken connection to us (we can hear them)."""
        return set(self._inbound_by_peer)

    def stop(self) -> defer.Deferred:
        """Close every connection and stop reconnecting; fires once all are closed."""
        self._stopped = True
        self.drops.stop()
        protocols = [*self._outbound, *self._inbound]
        waits = [proto.closed for proto in protocols]
        for link in self._links.values():
            link.stop()
        for proto in protocols:
            proto.close_connection()
        self._links.clear()
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- used by the protocols ----------------------------------------------

    def _check_hello(self, hello: Hello, expected: str | None = None,
                     inbound: PeerServerProtocol | None = None) -> str | None:
        reason = self.identity.check(hello)
        if reason is None and expected is not None and hello.node_id != expected:
            reason = f"expected node {expected} at this address, found {hello.node_id}"
        if reason is None and inbound is not None and self.tls is None:
            # Without TLS an alive link wins (see the module docstring); with TLS the
            # newcomer proved who it is, and a restarted peer replaces its old link at once.
            old = self._inbound_by_peer.get(hello.node_id)
            if old is not None and old is not inbound and old.alive():
                reason = (f"{hello.node_id} is already connected to us and that connection is "
                          f"alive; keeping it")
        if reason is None and self.accept_peer is not None:
            try:
                reason = self.accept_peer(hello)
            except Exception:
                log.failure("accept_peer failed for {peer}", peer=hello.node_id)
                reason = "internal error while checking the peer"
        return reason

    def _check_certificate(self, hello: Hello, transport: Any) -> str | None:
        """With TLS: the reason to refuse a Hello whose node id is not the one the certificate names."""
        if self.tls is None:
            return None
        identity = peer_identity(transport)
        if identity is None:
            return "no verified certificate"
        if not identity.is_node:
            return f"the certificate names {identity}, not a node"
        if identity.name != hello.node_id:
            return f"the certificate names node {identity.name}, the Hello claims {_one_line(hello.node_id, 64)}"
        return None

    def _evict_unhandshaken(self) -> bool:
        """Make room by closing the oldest inbound connection still without a handshake.

        At the limit, a flood of connections that never say Hello would
        otherwise lock out a member that restarts: its new connection would
        be refused for as long as the flood goes on.  Evicting the oldest
        unproven connection instead lets a member in, since it proves itself
        within a round trip, long before a flood can cycle through the
        whole limit.  Handshaken members are never evicted.  True if one went.
        """
        waiting = [p for p in self._inbound if p.peer_id is None and not p.transport.disconnecting]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda p: p.connected_at)
        self.drops.emit("peer connections evicted",
                        "closing peer connection from {addr}: no handshake yet and the limit of {limit} "
                        "inbound connections is reached", addr=_peer_text(oldest.transport),
                        limit=self.max_connections)
        oldest.close_connection()
        self._inbound.discard(oldest)  # its connectionLost follows; the slot is free now
        return True

    def _inbound_ready(self, proto: PeerServerProtocol) -> None:
        peer_id = proto.peer_id
        assert peer_id is not None  # set by the handshake that calls this
        old = self._inbound_by_peer.get(peer_id)
        self._inbound_by_peer[peer_id] = proto
        self._refusal_logged.pop(peer_id, None)
        if old is not None and old is not proto:
            # The peer keeps one outgoing connection; a new one means the
            # old one is dead on its side (_check_hello refused the newcomer
            # if the old one was still delivering frames).
            log.info("peer {peer} reconnected; closing its previous, silent connection", peer=peer_id)
            old.close_connection()
        else:
            log.info("peer {peer} connected to us from {addr}", peer=peer_id,
                     addr=_peer_text(proto.transport))

    def _inbound_lost(self, proto: PeerServerProtocol) -> None:
        self._inbound.discard(proto)
        if proto.peer_id is not None and self._inbound_by_peer.get(proto.peer_id) is proto:
            del self._inbound_by_peer[proto.peer_id]
            log.info("peer {peer} disconnected from us", peer=proto.peer_id)

    def _deliver(self, msg: Message) -> None:
        try:
            self.on_message(msg)
        except Exception:
            log.failure("on_message failed for {type} from {peer}", type=msg.type.name, peer=msg.frm)

    def _refused(self, peer_id: str, line: str, reason: str) -> None:
        # A refused peer retries every second; log the first refusal, and
        # again only if the reason changes.
        # ``reason`` leaves out the source port, which changes with every attempt.
        self.stats.refuse("tls" if peer_id.startswith("tls:") else
                          "refused_us" if reason.startswith("refused us") else "handshake")
        if self._refusal_logged.get(peer_id) != reason:
            if len(self._refusal_logged) > 1024:
                self._refusal_logged.clear()  # bounded, whatever strangers call themselves
            self._refusal_logged[peer_id] = reason
            self.drops.emit("refused peers", "{line}", line=line)
        self._event(peer_id, REFUSED)

    def _event(self, peer_id: str, event: str) -> None:
        if self.on_peer_event is None:
            return
        try:
            self.on_peer_event(peer_id, event)
        except Exception:
            log.failure("on_peer_event failed for {peer} {event}", peer=peer_id, event=event)

    def _backoff(self, failures: int) -> float:
        delay = min(self.max_backoff, self.initial_backoff * (2 ** min(failures, 32)))
        return delay * self.rng.uniform(0.75, 1.25)
