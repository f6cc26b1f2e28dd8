"""One client connection to a node: pipelined requests matched to replies by id."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from storg.server.framing import FrameReceiver
from storg.wire import CODEC, CodecError, ErrorCode, ErrorReply


class ServerError(Exception):
    """The node answered with an ErrorReply."""

    def __init__(self, code: int, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader

    @property
    def not_leader(self) -> bool:
        return self.code == ErrorCode.NOT_LEADER


class ProtocolViolation(Exception):
    """The node sent something that is not a valid reply."""


class ClientConnection(FrameReceiver):
    """Sends requests and fires each one's Deferred with its reply."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, defer.Deferred] = {}
        self.closed: defer.Deferred = defer.Deferred()

    def request(self, make: Callable[[int], Any]) -> defer.Deferred:
        """``make(request_id)`` builds the request; fires with the reply or fails with ServerError."""
        request_id = next(self._ids)
        d: defer.Deferred = defer.Deferred()
        self._pending[request_id] = d
        self.sendString(CODEC.encode(make(request_id)))
        return d

    def stringReceived(self, data: bytes) -> None:
        try:
            reply = CODEC.decode(data)
            request_id = reply.request_id
        except (CodecError, AttributeError) as exc:
            self._fail_all(ProtocolViolation(f"bad reply from node: {exc}"))
            self.transport.loseConnection()
            return
        d = self._pending.pop(request_id, None)
        if d is None:
            return
        if isinstance(reply, ErrorReply):
            d.errback(ServerError(reply.code, reply.message, reply.leader))
        else:
            d.callback(reply)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._fail_all(ConnectionLost("connection to the node was lost"))
        if not self.closed.called:
            self.closed.callback(None)

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


async def connect(reactor: Any, address: str, timeout: float = 5.0) -> ClientConnection:
    """Open a connection to a node's client port."""
    host, port = split_address(address)
    endpoint_cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = endpoint_cls(reactor, host, port, timeout=timeout)
    return await connectProtocol(endpoint, ClientConnection())
