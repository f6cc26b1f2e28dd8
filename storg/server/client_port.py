"""The client port: storgctl and the client library talk to a node here.

Framing, dispatch and commands are separate pieces, as in Twisted's AMP:
:class:`~storg.server.framing.FrameReceiver` cuts frames, ``CODEC`` turns a
frame into a request object, and a handler table maps each request class to
a method of the node's :class:`ClientApi` that returns the reply (or a
Deferred of it).  A later command is one more row in the table.

Requests carry ids and may be pipelined: replies go out as each finishes.
Garbage, a truncated or oversized frame, or a frame that is not a request
closes this connection only, with one log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.raft.errors import NotLeader, ProposalDropped
from storg.server.framing import FrameReceiver
from storg.node import Timeout
from storg.wire import (
    CODEC, CodecError, ErrorCode, ErrorReply, ProbeRead, ProbeWrite, StatusReply,
    StatusRequest,
)

log = Logger(namespace="storg.client_port")


class RequestError(Exception):
    """A refusal with an error code, raised by handlers and sent as ErrorReply."""

    def __init__(self, code: ErrorCode, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader


class ClientApi(Protocol):
    """What the client port needs from the node's service."""

    def status_reply(self, request: StatusRequest) -> StatusReply: ...

    def probe_write(self, request: ProbeWrite) -> defer.Deferred: ...  # of ProbeReply

    def probe_read(self, request: ProbeRead) -> defer.Deferred: ...  # of ProbeReply

    def leader_client_address(self) -> str: ...


class ClientPortProtocol(FrameReceiver):
    """One client connection."""

    def __init__(self, api: ClientApi) -> None:
        self.api = api
        self.handlers: dict[type, Callable[[Any], Any]] = {
            StatusRequest: api.status_reply,
            ProbeWrite: api.probe_write,
            ProbeRead: api.probe_read,
        }

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
        d = defer.maybeDeferred(handler, request)
        d.addErrback(self._error_reply, request.request_id)
        d.addCallback(self._send)
        d.addErrback(lambda f: log.failure("replying to a client failed", f))

    def _error_reply(self, failure: Failure, request_id: int) -> ErrorReply:
        exc = failure.value
        if isinstance(exc, RequestError):
            return ErrorReply(request_id, int(exc.code), str(exc), exc.leader)
        if isinstance(exc, NotLeader):
            return ErrorReply(request_id, int(ErrorCode.NOT_LEADER), "not the leader",
                              self.api.leader_client_address())
        if isinstance(exc, (ProposalDropped, Timeout)):
            return ErrorReply(request_id, int(ErrorCode.UNAVAILABLE),
                              f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        log.failure("request {rid} failed", failure, rid=request_id)
        return ErrorReply(request_id, int(ErrorCode.INTERNAL), f"internal error: {exc!r}")

    def _send(self, reply: object) -> None:
        if self.transport is not None and self.connected:
            self.sendString(CODEC.encode(reply))

    def _drop(self, why: str) -> None:
        peer = self.transport.getPeer() if self.transport is not None else "?"
        log.warn("closing client connection from {peer}: {why}", peer=peer, why=why)
        self.transport.loseConnection()


class ClientPortFactory(Factory):
    """Builds a ClientPortProtocol per connection; listen it on any endpoint (TCP now, TLS later)."""

    def __init__(self, api: ClientApi) -> None:
        self.api = api

    def buildProtocol(self, addr: Any) -> ClientPortProtocol:
        proto = ClientPortProtocol(self.api)
        proto.factory = self
        return proto
