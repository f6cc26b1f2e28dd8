"""The client port: storgctl, the client library and other nodes' chunk traffic.

Framing, dispatch and commands are separate pieces, as in Twisted's AMP:
:class:`~storg.net.framing.FrameReceiver` cuts frames, ``CODEC`` turns a
frame into a request object, and a handler table (from the node's
:class:`ClientApi`) maps each request class to a function of
``(request, connection)``.  A handler returns the reply (or a Deferred of
it), or ``None`` when it answers through the connection itself, as the
streaming commands do (a get sends many frames; a put's data frames get no
reply of their own).

Requests carry ids and may be pipelined.  Garbage, a truncated or oversized
frame, or a frame that is not a request closes this connection only, with
one log line.

Who is on the other end: with TLS (the factory's ``tls``), the verified
certificate's identity, read at the first request (the handshake is done by
then: no byte reaches us before it), decides what the connection may send,
by :mod:`storg.server.permissions`; a refusal is an ErrorReply
PERMISSION_DENIED and a rate-limited log line, and nothing reaches a handler.
A TLS handshake that fails is logged (rate-limited) when the connection ends.

Flow control both ways: :meth:`ClientConnection.writable` waits until the
transport has room (a push producer registered on it is paused while its
buffer is full), and :meth:`ClientConnection.pause_reading` stops reading
the socket while an upload has too many bytes in flight.

Limits (``limits:`` in the config; docs/architecture.rst, section "Limits"):

* connections: past ``max_client_connections`` open connections a new one
  is answered with one ``ErrorReply(0, LIMIT_EXCEEDED)`` (request id 0: the
  connection, not a request; the client library fails every request of
  the connection with :class:`~storg.net.errors.LimitExceeded`) and closed
  (half-closed first, so the reply is not lost: see :class:`_Refused`),
  with a rate-limited log line;
* idle: a connection with no request being handled that sent nothing for
  ``idle_timeout_s`` is closed (a client library reconnects on its next
  request), so abandoned connections do not pile up to the limit above;
* requests in flight: past ``max_requests_in_flight`` requests of one
  connection being handled, the node stops reading that connection until
  one finishes.  Flow control, not an error, because a refusal would fail
  legitimate pipelining (a leader sends every chunk copy for every upload
  to a follower on one connection, a burst of hundreds), while TCP already
  makes the client wait; and it cannot deadlock, since a request counts as
  in flight only while its handler runs, and no handler waits for a later
  frame of its own connection (a put's data frames are answered by nothing;
  only its ``PutEnd`` is in flight, waiting for chunks already read).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from storg import tracing
from storg.config import LimitTuning
from storg.net.flow import WriteWindow
from storg.net.framing import FrameReceiver, Transport, describe_address
from storg.net.protocol import frame_bytes
from storg.net.ratelimit import OncePerReason, RateLimitedLog
from storg.net.tls import Identity, describe_tls_failure, is_tls_failure, peer_identity
from storg.node.raft_node import NodeStopped, Timeout
from storg.raft.errors import NotLeader, ProposalDropped, ProposalTooLarge
from storg.server.permissions import refusal
from storg.wire import CODEC, CodecError, ErrorCode, ErrorReply

log = Logger(namespace="storg.client_port")

_LENGTH = struct.Struct("!I")

Handler = Callable[[Any, "ClientConnection"], Any]

RequestObserver = Callable[[type, str, float], object]
"""Told ``(request type, outcome, seconds)`` when a request's handler is done (reactor thread).

``outcome`` is ``ok`` or the lower-case ErrorCode name of the reply
(``not_leader``, ``permission_denied``, ...); ``seconds`` runs from the
frame's arrival to the handler's result (for a streamed get: to its last
frame handed to the transport).  The metrics layer turns it into
``storg_client_request_duration_seconds``."""


class RequestError(Exception):
    """A refusal with an error code, raised by handlers and sent as ErrorReply."""

    def __init__(self, code: ErrorCode, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader


class ClientApi(TypingProtocol):
    """What the client port needs from the node's service."""

    def client_handlers(self) -> dict[type, Handler]: ...

    def leader_client_address(self) -> str: ...


class HeldReply:
    """A reply held until the frames of the current read are handled; see send_soon."""

    __slots__ = ("cancelled", "frame")

    def __init__(self, frame: object) -> None:
        self.frame = frame
        self.cancelled = False

    def cancel(self) -> bool:
        """Drop the reply if it is still held; True if it was (it will never be sent)."""
        if self.frame is None:
            return False
        self.cancelled = True
        self.frame = None
        return True


@implementer(IHandshakeListener)
class ClientConnection(FrameReceiver):
    """One connection to the client port."""

    # Connected (makeConnection) as soon as the factory builds it, before
    # any method here runs: the transport is always there.
    transport: Transport

    factory: ClientPortFactory | None = None

    def __init__(self, api: ClientApi, limits: LimitTuning | None = None, reactor: Any = None,
                 drops: RateLimitedLog | None = None, *, tls: bool = False,
                 is_member: Callable[[str], bool] = lambda node_id: False,
                 refusals: OncePerReason | None = None, on_request: RequestObserver | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.api = api
        self.on_request = on_request
        self.tls = tls
        self.is_member = is_member
        self.identity: Identity | None = None
        """Who the verified certificate names (TLS), set at the handshake or the first request."""
        self._handshaken = False
        self._refusals = refusals if refusals is not None else OncePerReason(log, reactor)
        self.handlers = api.client_handlers()
        self.limits = limits if limits is not None else LimitTuning()
        self.reactor = reactor
        self._drops = drops if drops is not None else RateLimitedLog(log, reactor)
        self._window = WriteWindow()
        self._on_close: list[Callable[[], object]] = []
        self._read_pauses = 0
        self._held: list[HeldReply] = []
        self.in_flight = 0
        """Requests whose handler has not finished (their Deferred has not fired)."""
        self._limit_paused = False
        self._last_received = 0.0
        self._idle_call: Any = None

    # -- what handlers use ---------------------------------------------------

    def send(self, obj: object) -> None:
        if self.transport is not None and self.connected and not self.transport.disconnecting:
            if tracing.ON:
                tracing.mark("port.send", type(obj).__name__)
            self.sendString(CODEC.encode(obj))

    def send_all(self, frames: list[object]) -> None:
        """Write ``frames`` in one call: small ones become one TLS record and one send, not one each.

        A small file's get is three frames (GetStart, GetData, GetEnd); sent
        one by one, each is encrypted and handed to TCP on its own, which
        TLS made about a fifth of such a get's cost on the node.
        """
        if self.transport is not None and self.connected and not self.transport.disconnecting:
            if tracing.ON:
                tracing.mark("port.send", "+".join(type(frame).__name__ for frame in frames))
            pieces: list[bytes] = []
            for frame in frames:
                pieces.extend(frame_bytes(frame))
            self.transport.writeSequence(pieces)

    def send_soon(self, obj: object) -> HeldReply:
        """Send ``obj`` once the frames already read from the socket are handled.

        Until then :meth:`HeldReply.cancel` drops it: a PutReady whose
        PutEnd came in the same read (a client that did not wait for it)
        is never sent.
        """
        held = HeldReply(obj)
        if self._parsing:
            self._held.append(held)
        else:  # not called while handling a read: nothing later can make it moot
            held.frame = None
            self.send(obj)
        return held

    def framesDelivered(self) -> None:
        held, self._held = self._held, []
        for reply in held:
            frame, reply.frame = reply.frame, None
            if frame is not None:
                self.send(frame)

    def send_error(self, request_id: int, failure: Failure | BaseException) -> None:
        self.send(self.error_reply(failure, request_id))

    def writable(self) -> defer.Deferred:
        """Fires once the transport's buffer has room (at once if it has)."""
        return self._window.wait()

    @property
    def backed_up(self) -> bool:
        """Whether the transport's buffer is full (the peer is not reading fast enough)."""
        return self._window.paused

    @property
    def open(self) -> bool:
        transport = self.transport
        return self.connected != 0 and transport is not None and not transport.disconnecting

    def on_close(self, callback: Callable[[], object]) -> None:
        self._on_close.append(callback)

    def pause_reading(self) -> None:
        """Stop reading frames (nested: each pause needs its resume)."""
        self._read_pauses += 1
        if self._read_pauses == 1:
            self.pauseProducing()

    def resume_reading(self) -> None:
        if self._read_pauses == 0:
            return
        self._read_pauses -= 1
        if self._read_pauses == 0 and self.open:
            # The node, not the client, was the one waiting: the idle clock restarts.
            self._last_received = self.reactor.seconds()
            self.resumeProducing()
            self._arm_idle()

    # -- Twisted -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._last_received = self.reactor.seconds()
        self._arm_idle()
        self.transport.registerProducer(self._window, True)
        # Replies are often small frames written back to back (GetStart,
        # GetData, GetEnd): Nagle's algorithm would hold them for a delayed ACK.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake succeeded; the identity is verified from here on."""
        self._handshaken = True
        self.identity = peer_identity(self.transport)

    def trust(self, identity: Identity | None) -> None:
        """Take ``identity`` as the other end's, with no handshake: a connection made inside this
        process (:mod:`storg.net.local_pipe`), whose other end is the node itself."""
        self._handshaken = True
        self.identity = identity

    def connectionLost(self, reason: object = None) -> None:
        if self.tls and not self._handshaken and isinstance(reason, Failure) and is_tls_failure(reason):
            peer = self.transport.getPeer()
            why = describe_tls_failure(self.transport, reason)
            self._refusals.warn(f"tls:{getattr(peer, 'host', peer)}:{why}",
                                "refused a TLS connection from {peer}: {why}", peer=peer, why=why)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if self.factory is not None:
            self.factory.connection_closed(self)
        super().connectionLost(reason)
        self._window.resumeProducing()
        callbacks, self._on_close = self._on_close, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.failure("client connection close callback failed")

    def close_connection(self) -> None:
        # A transport does not finish closing while a producer is registered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._last_received = self.reactor.seconds()
        if tracing.ON:
            tracing.mark("port.recv", f"bytes={len(data)}")
        super().dataReceived(data)

    # -- idle timeout ----------------------------------------------------------

    def _arm_idle(self) -> None:
        """Check for idleness ``idle_timeout_s`` after the last byte, unless a request runs."""
        if self._idle_call is None and self.in_flight == 0 and self._read_pauses == 0 and self.open:
            delay = self._last_received + self.limits.idle_timeout_s - self.reactor.seconds()
            self._idle_call = self.reactor.callLater(max(0.0, delay), self._idle_check)

    def _idle_check(self) -> None:
        self._idle_call = None
        if self.in_flight or self._read_pauses or not self.open:
            return  # re-armed when the last request finishes or reading resumes
        idle = self.reactor.seconds() - self._last_received
        if idle < self.limits.idle_timeout_s:
            self._arm_idle()  # bytes came meanwhile: look again later
            return
        self._drops.emit("idle client connections",
                         "closing client connection from {peer}: idle for {idle:.0f} s",
                         peer=describe_address(self.transport.getPeer()), idle=idle)
        self.close_connection()

    # -- requests in flight ------------------------------------------------------

    def _started(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.limits.max_requests_in_flight and not self._limit_paused:
            # Flow control (see the module docstring): the next frame waits in the socket.
            self._limit_paused = True
            self.pause_reading()

    def _finished(self, result: object) -> object:
        self.in_flight -= 1
        if self._limit_paused and self.in_flight < self.limits.max_requests_in_flight:
            self._limit_paused = False
            self.resume_reading()
        if self.in_flight == 0:
            # The reply just went out: the client's next request may follow it.
            self._last_received = self.reactor.seconds()
            self._arm_idle()
        return result

    def stringReceived(self, data: bytes) -> None:
        try:
            request = CODEC.decode(data)
        except CodecError as exc:
            self._drop(f"undecodable frame: {exc}")
            return
        handler = self.handlers.get(type(request))
        if handler is None:
            self._drop(f"{type(request).__name__} is not a client request")
            return
        request_id = request.request_id
        if tracing.ON:
            tracing.mark("port.request", type(request).__name__)
        if self.tls:
            if self.identity is None:
                self.identity = peer_identity(self.transport)
            if self.identity is None:  # cannot happen over a verified TLS listener: refuse, never assume
                self._drop("no verified certificate")
                return
            why = refusal(self.identity, request, self.is_member)
            if why is not None:
                self._refusals.warn(f"denied:{self.identity}:{type(request).__name__}",
                                    "permission denied to {who} from {peer}: {why}",
                                    who=self.identity, peer=self.transport.getPeer(), why=why)
                self.send(ErrorReply(request_id, int(ErrorCode.PERMISSION_DENIED), why))
                self._observe(type(request), "permission_denied", 0.0)
                return
        started = time.monotonic()
        d = defer.maybeDeferred(handler, request, self)
        counted = not d.called
        if counted:
            self._started()
        d.addCallbacks(self._reply, self._failed, callbackArgs=(type(request), started),
                       errbackArgs=(request_id, type(request), started))
        if counted:
            d.addBoth(self._finished)  # after the reply: resuming may deliver further frames
        d.addErrback(lambda f: log.failure("replying to a client failed", f))

    def _reply(self, reply: object, kind: type = object, started: float = 0.0) -> None:
        if reply is not None:
            self.send(reply)
        self._observe(kind, "ok", time.monotonic() - started)

    def _failed(self, failure: Failure, request_id: int, kind: type = object, started: float = 0.0) -> None:
        reply = self.error_reply(failure, request_id)
        self.send(reply)
        try:
            outcome = ErrorCode(reply.code).name.lower()
        except ValueError:
            outcome = "error"
        self._observe(kind, outcome, time.monotonic() - started)

    def _observe(self, kind: type, outcome: str, seconds: float) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(kind, outcome, seconds)
        except Exception:  # an observer must never cost a client its reply
            log.failure("request observer failed")

    def error_reply(self, failure: Failure | BaseException, request_id: int) -> ErrorReply:
        exc = failure.value if isinstance(failure, Failure) else failure
        code = getattr(exc, "code", None)
        if isinstance(exc, RequestError):
            return ErrorReply(request_id, int(exc.code), str(exc), exc.leader)
        if isinstance(exc, ProposalTooLarge):
            return ErrorReply(request_id, int(ErrorCode.LIMIT_EXCEEDED), str(exc))
        if isinstance(exc, NotLeader):
            return ErrorReply(request_id, int(ErrorCode.NOT_LEADER), "not the leader",
                              self.api.leader_client_address())
        if isinstance(exc, (ProposalDropped, Timeout, NodeStopped, defer.TimeoutError)):
            # Try again elsewhere: a stopping node's proposal may still commit,
            # and the client's session makes the retry apply it once.
            return ErrorReply(request_id, int(ErrorCode.UNAVAILABLE),
                              f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if isinstance(code, ErrorCode):
            return ErrorReply(request_id, int(code), str(exc))
        if isinstance(failure, Failure):
            log.failure("request {rid} failed", failure, rid=request_id)
        else:
            log.error("request {rid} failed: {exc!r}", rid=request_id, exc=exc)
        return ErrorReply(request_id, int(ErrorCode.INTERNAL), f"internal error: {exc!r}")

    def _drop(self, why: str) -> None:
        self._drops.emit("bad client frames", "closing client connection from {peer}: {why}",
                         peer=describe_address(self.transport.getPeer()), why=why)
        self.close_connection()


REFUSAL_LINGER = 2.0
"""Seconds a refused connection may stay half-closed, for the client to read its ErrorReply."""

MAX_LINGERING = 64
"""Refused connections allowed to linger at once; past it they are closed at once."""


class _Refused(Protocol):
    """A connection over the limit: one ErrorReply for the whole connection, then closed.

    Closing a socket with unread bytes makes the kernel send a reset, which
    can destroy the reply before the client reads it (a client writes its
    request as soon as it is connected).  So the reply is followed by a
    half-close (FIN), what the client sends is read and dropped, and the
    connection ends when the client closes it or after ``REFUSAL_LINGER``
    seconds.  At most ``MAX_LINGERING`` linger at once (a flood gets plain
    closes), so refusals cannot hold the file descriptors the limit saves.
    """

    def __init__(self, owner: ClientPortFactory, message: str) -> None:
        self.owner = owner
        self.message = message
        self._timer: Any = None

    def connectionMade(self) -> None:
        body = CODEC.encode(ErrorReply(0, int(ErrorCode.LIMIT_EXCEEDED), self.message))
        transport = cast(Any, self.transport)
        transport.write(_LENGTH.pack(len(body)) + body)
        # Over TLS the reply waits for the handshake inside the TLS layer, and a TCP half-close
        # would cut that handshake short (the client would see a connection lost before it):
        # the TLS layer's own close flushes the reply first, then ends the connection.
        tls = ISSLTransport.providedBy(transport)
        half_close = None if tls else getattr(transport, "loseWriteConnection", None)
        if (half_close is None and not tls) or self.owner.lingering >= MAX_LINGERING:
            transport.loseConnection()
            return
        self.owner.lingering += 1
        if tls:
            transport.loseConnection()  # after the handshake and the reply; bounded by the timer
        elif half_close is not None:
            half_close()
        self._timer = self.owner.reactor.callLater(REFUSAL_LINGER, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass  # whatever the client sent before it read the refusal

    def connectionLost(self, reason: object = None) -> None:
        if self._timer is not None:
            self.owner.lingering -= 1
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class ClientPortFactory(Factory):
    """Builds a ClientConnection per connection; listen it on any endpoint, TCP or TLS.

    Counts the open connections: past ``limits.max_client_connections`` a
    new one gets a :class:`_Refused` instead (see the module docstring).
    The refusals and drops of all its connections share one rate-limited log.
    ``tls``: the endpoint is TLS, so every connection's identity is checked
    against :mod:`storg.server.permissions`; ``is_member(node_id)`` tells a
    current member's node certificate from a removed node's.
    """

    noisy = False

    def __init__(self, api: ClientApi, limits: LimitTuning | None = None, reactor: Any = None, *,
                 tls: bool = False, is_member: Callable[[str], bool] = lambda node_id: False,
                 on_request: RequestObserver | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.api = api
        self.limits = limits if limits is not None else LimitTuning()
        self.reactor = reactor
        self.drops = RateLimitedLog(log, reactor)
        self.tls = tls
        self.is_member = is_member
        self.refusals = OncePerReason(log, reactor)
        self.on_request = on_request
        self.connections: set[ClientConnection] = set()
        self.refused = 0
        """Connections refused for the limit since the start (for tests and status)."""
        self.lingering = 0
        """Refused connections still half-open, waiting for the client to read why."""

    def buildProtocol(self, addr: Any) -> Protocol:
        limit = self.limits.max_client_connections
        if len(self.connections) >= limit:
            self.refused += 1
            self.drops.emit("client connection limit",
                            "refusing client connection from {peer}: {limit} connections are open "
                            "(limits.max_client_connections)", peer=describe_address(addr), limit=limit)
            refusal = _Refused(self, f"the node has {limit} client connections open "
                               "(limits.max_client_connections); try again later")
            refusal.factory = self
            return refusal
        proto = ClientConnection(self.api, self.limits, self.reactor, self.drops, tls=self.tls,
                                 is_member=self.is_member, refusals=self.refusals, on_request=self.on_request)
        proto.factory = self
        self.connections.add(proto)
        return proto

    def connection_closed(self, proto: ClientConnection) -> None:
        self.connections.discard(proto)
