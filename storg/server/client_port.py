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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from storg.net.flow import WriteWindow
from storg.net.framing import FrameReceiver, Transport
from storg.net.tls import Identity, describe_tls_failure, peer_identity
from storg.node.raft_node import NodeStopped, Timeout
from storg.raft.errors import NotLeader, ProposalDropped
from storg.server.permissions import refusal
from storg.wire import CODEC, CodecError, ErrorCode, ErrorReply

log = Logger(namespace="storg.client_port")

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


class ClientApi(Protocol):
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

    def __init__(self, api: ClientApi, *, tls: bool = False,
                 is_member: Callable[[str], bool] = lambda node_id: False,
                 refusals: Any = None, on_request: RequestObserver | None = None) -> None:
        self.api = api
        self.on_request = on_request
        self.tls = tls
        self.is_member = is_member
        self.identity: Identity | None = None
        """Who the verified certificate names (TLS), set at the handshake or the first request."""
        self._handshaken = False
        self._refusals = refusals if refusals is not None else _ONCE_PER_REASON
        self.handlers = api.client_handlers()
        self._window = WriteWindow()
        self._on_close: list[Callable[[], object]] = []
        self._read_pauses = 0
        self._held: list[HeldReply] = []

    # -- what handlers use ---------------------------------------------------

    def send(self, obj: object) -> None:
        if self.transport is not None and self.connected and not self.transport.disconnecting:
            self.sendString(CODEC.encode(obj))

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
            self.resumeProducing()

    # -- Twisted -------------------------------------------------------------

    def connectionMade(self) -> None:
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

    def connectionLost(self, reason: object = None) -> None:
        if self.tls and not self._handshaken and isinstance(reason, Failure) \
                and isinstance(reason.value, SSL.Error):
            peer = self.transport.getPeer()
            why = describe_tls_failure(self.transport, reason)
            self._refusals.warn(f"tls:{getattr(peer, 'host', peer)}:{why}",
                                "refused a TLS connection from {peer}: {why}", peer=peer, why=why)
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
        d.addCallbacks(self._reply, self._failed, callbackArgs=(type(request), started),
                       errbackArgs=(request_id, type(request), started))
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
        log.warn("closing client connection from {peer}: {why}", peer=self.transport.getPeer(), why=why)
        self.close_connection()


class OncePerReason:
    """Logs a refusal the first time its key is seen, and again only every ``interval`` seconds.

    A client retrying with a refused certificate every second must not fill
    the log; an operator still sees each distinct refusal at once.  Bounded:
    at most ``max_keys`` keys are remembered, whatever strangers send.
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1024, clock: Any = None) -> None:
        self._now = time.monotonic if clock is None else clock.seconds
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}

    def warn(self, key: str, fmt: str, **fields: Any) -> bool:
        now = self._now()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        log.warn(fmt, **fields)
        return True


_ONCE_PER_REASON = OncePerReason()


class ClientPortFactory(Factory):
    """Builds a ClientConnection per connection; listen it on any endpoint, TCP or TLS.

    ``tls``: the endpoint is TLS, so every connection's identity is checked
    against :mod:`storg.server.permissions`; ``is_member(node_id)`` tells a
    current member's node certificate from a removed node's.
    """

    noisy = False

    def __init__(self, api: ClientApi, *, tls: bool = False,
                 is_member: Callable[[str], bool] = lambda node_id: False,
                 on_request: RequestObserver | None = None) -> None:
        self.api = api
        self.tls = tls
        self.is_member = is_member
        self.refusals = OncePerReason()
        self.on_request = on_request

    def buildProtocol(self, addr: Any) -> ClientConnection:
        proto = ClientConnection(self.api, tls=self.tls, is_member=self.is_member, refusals=self.refusals,
                                 on_request=self.on_request)
        proto.factory = self
        return proto
