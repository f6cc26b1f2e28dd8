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

Flow control both ways: :meth:`ClientConnection.writable` waits until the
transport has room (a push producer registered on it is paused while its
buffer is full), and :meth:`ClientConnection.pause_reading` stops reading
the socket while an upload has too many bytes in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.net.flow import WriteWindow
from storg.net.framing import FrameReceiver, Transport
from storg.node.raft_node import NodeStopped, Timeout
from storg.raft.errors import NotLeader, ProposalDropped
from storg.wire import CODEC, CodecError, ErrorCode, ErrorReply

log = Logger(namespace="storg.client_port")

Handler = Callable[[Any, "ClientConnection"], Any]


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


class ClientConnection(FrameReceiver):
    """One connection to the client port."""

    # Connected (makeConnection) as soon as the factory builds it, before
    # any method here runs: the transport is always there.
    transport: Transport

    def __init__(self, api: ClientApi) -> None:
        self.api = api
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

    def connectionLost(self, reason: object = None) -> None:
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
        d = defer.maybeDeferred(handler, request, self)
        d.addCallbacks(self._reply, self._failed, errbackArgs=(request_id,))
        d.addErrback(lambda f: log.failure("replying to a client failed", f))

    def _reply(self, reply: object) -> None:
        if reply is not None:
            self.send(reply)

    def _failed(self, failure: Failure, request_id: int) -> None:
        self.send(self.error_reply(failure, request_id))

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


class ClientPortFactory(Factory):
    """Builds a ClientConnection per connection; listen it on any endpoint (TCP now, TLS later)."""

    def __init__(self, api: ClientApi) -> None:
        self.api = api

    def buildProtocol(self, addr: Any) -> ClientConnection:
        proto = ClientConnection(self.api)
        proto.factory = self
        return proto
