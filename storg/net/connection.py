"""One client connection to a node: pipelined requests matched to replies by id.

A request is answered by one frame (status, stat, rm) or by several that
share its id (a get's GetStart, GetData..., GetEnd; an ls's pages; a put's
PutReady then PutDone).  :class:`Stream` is one such request; a one-frame
request is a stream whose first frame is terminal.

Flow control works both ways, with Twisted's producer/consumer interfaces
rather than our own buffers:

* sending: the connection registers a streaming producer (:class:`~storg.net.flow.WriteWindow`)
  on its transport.  The transport pauses it when its write buffer is over
  its ``bufferSize`` and resumes it once drained; an upload awaits
  :meth:`RequestConnection.wait_writable` before each frame, so at most one
  frame beyond the transport's small buffer is ever queued in this process.
* receiving: :meth:`RequestConnection.pause_reading` stops reading the socket
  (and delivering frames already read) while a slow sink catches up.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from storg import tracing
from storg.net.errors import ProtocolViolation, ServerError, TLSRefused
from storg.net.flow import WriteWindow
from storg.net.framing import FrameReceiver, frame_bytes, send_bulk
from storg.net.protocol import Requests, split_address

if TYPE_CHECKING:
    from storg.net.tls import ClientTLS

__all__ = [
    "RequestConnection", "ProtocolViolation", "ServerError", "Stream", "TLSHandshakeFailed", "connect",
    "split_address",
]


class TLSHandshakeFailed(ConnectionLost, TLSRefused):
    """TLS with a node failed: its certificate was refused here, or ours there (an OpenSSL error).

    A ConnectionLost, so that callers that try the next node on a lost
    connection do so; its message says why (``describe_tls_failure``).  A
    connection that merely ends during the handshake (a node killed) is a
    plain ConnectionLost instead: only a refusal is a TLS problem.
    """


class Stream:
    """One request in flight, answered by one or more frames carrying its id.

    ``on_frame(frame)`` sees every non-error frame and returns True for the
    terminal one; ``done`` then fires with that frame.  An ErrorReply at any
    point, a lost connection, an exception from ``on_frame`` or
    :meth:`abort` fail ``done`` instead.
    """

    def __init__(self, conn: RequestConnection, request_id: int,
                 on_frame: Callable[[Any], bool]) -> None:
        self.conn = conn
        self.request_id = request_id
        # Cancelling (say, by addTimeout) forgets the request, so a late reply is dropped.
        self.done: defer.Deferred = defer.Deferred(lambda _: conn._forget(self))
        self.error: Exception | None = None
        self._on_frame = on_frame

    @property
    def finished(self) -> bool:
        return self.done.called

    def send(self, frame: Any) -> None:
        """Send a further frame of this request (PutData, PutEnd)."""
        self.conn.send(frame)

    def abort(self, exc: Exception) -> None:
        """Give up on this request: later frames carrying its id are ignored."""
        self.conn._forget(self)
        self._fail(exc)

    def _frame(self, frame: Any) -> None:
        try:
            terminal = self._on_frame(frame)
        except Exception as exc:
            self.abort(exc)
            return
        if terminal and not self.done.called:
            self.conn._forget(self)
            self.done.callback(frame)

    def _fail(self, exc: Exception) -> None:
        if not self.done.called:
            self.error = exc
            self.conn._fail_waiters(self, exc)
            self.done.errback(Failure(exc))


def _single(frame: Any) -> bool:
    return True


@implementer(IHandshakeListener)
class RequestConnection(FrameReceiver):
    """Sends requests and delivers each one's reply frames to its :class:`Stream`.

    Over TLS, :attr:`handshake` fires once the handshake has completed (and
    fails with :class:`TLSHandshakeFailed` if the connection ends first);
    :func:`connect` waits for it, so a connection it returns is verified.
    """

    def __init__(self) -> None:
        # Ids and the matching of replies to requests: the client protocol's (storg.net.protocol).
        self._streams: Requests[Stream] = Requests()
        self._gate = WriteWindow(on_resume=self._wake_writers)
        self._writers: list[tuple[defer.Deferred, Stream | None]] = []
        self._read_pauses = 0
        self.closed: defer.Deferred = defer.Deferred()
        self.handshake: defer.Deferred = defer.Deferred()
        # The max_frame of this node's last PutReady: a small put that fits
        # may then send its data without waiting for the next one.
        self.max_frame: int | None = None
        self.refusal: ServerError | None = None
        """The node's ErrorReply for the whole connection (request id 0), say LIMIT_EXCEEDED
        for too many connections: every request of this connection fails with it."""

    # --- requests -------------------------------------------------------------

    def request(self, make: Callable[[int], Any]) -> defer.Deferred:
        """``make(request_id)`` builds the request; fires with the reply or fails with ServerError."""
        return self.request_stream(make, _single).done

    def request_stream(self, make: Callable[[int], Any], on_frame: Callable[[Any], bool],
                       then: Callable[[int], list[Any]] | None = None) -> Stream:
        """Send ``make(request_id)``; its reply frames go to ``on_frame`` (see :class:`Stream`).

        ``then(request_id)``: frames of the same request sent with it in one write (a small
        put's PutData and PutEnd), so that over TLS they go in one record, not one each.
        """
        request_id = self._streams.new_id()
        stream = Stream(self, request_id, on_frame)
        if self.refusal is not None:
            stream._fail(self.refusal)
            return stream
        if not self.connected or self.transport is None:
            stream._fail(ConnectionLost("connection to the node is closed"))
            return stream
        self._streams.add(request_id, stream)
        if then is None:
            self.send(make(request_id))
        else:
            self.send_all([make(request_id), *then(request_id)])
        return stream

    def send(self, frame: Any) -> None:
        """Encode and write one frame; a chunk's payload is not copied on the way (see framing)."""
        if tracing.ON:
            tracing.mark("conn.send", type(frame).__name__)
        send_bulk(self.transport, frame)

    def send_all(self, frames: list[Any]) -> None:
        """Encode ``frames`` and write them in one call (one TLS record when they are small)."""
        if tracing.ON:
            tracing.mark("conn.send", "+".join(type(frame).__name__ for frame in frames))
        pieces: list[bytes] = []
        for frame in frames:
            pieces.extend(frame_bytes(frame))
        assert self.transport is not None  # request_stream checked it
        self.transport.writeSequence(pieces)

    def _forget(self, stream: Stream) -> None:
        self._streams.forget(stream.request_id, stream)

    # --- flow control ----------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # Small requests (a PutEnd after a PutData, say) must not wait for
        # a delayed ACK: Nagle's algorithm would hold them up to 40 ms.
        transport = self.transport
        assert transport is not None  # makeConnection set it
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        transport.registerProducer(self._gate, True)

    @property
    def usable(self) -> bool:
        """Connected and not being closed: new requests may be sent on it."""
        return bool(self.connected and self.transport is not None
                    and not getattr(self.transport, "disconnecting", False))

    @property
    def writable(self) -> bool:
        """False while the transport's write buffer is full (or the connection is gone)."""
        transport = self.transport
        return (self.connected != 0 and transport is not None and not self._gate.paused
                and not getattr(transport, "disconnecting", False))

    def wait_writable(self, stream: Stream | None = None) -> defer.Deferred:
        """Fires once the transport can take another frame.

        Fails with ConnectionLost if the connection goes, and with the
        stream's error if ``stream`` fails meanwhile (a server that refuses
        an upload may also have stopped reading: we must not wait on it).
        """
        if stream is not None and stream.finished:
            return defer.fail(stream.error or ProtocolViolation("the request already ended"))
        if self.writable:
            return defer.succeed(None)
        if not self.connected:
            return defer.fail(ConnectionLost("connection to the node was lost"))
        entry: list = []

        def cancel(d: defer.Deferred) -> None:
            if entry and entry[0] in self._writers:
                self._writers.remove(entry[0])

        d: defer.Deferred = defer.Deferred(cancel)
        entry.append((d, stream))
        self._writers.append(entry[0])
        return d

    def _wake_writers(self) -> None:
        waiting, self._writers = self._writers, []
        for d, _ in waiting:
            d.callback(None)

    def _fail_waiters(self, stream: Stream | None, exc: Exception) -> None:
        """Fail the writers waiting for ``stream`` (all of them when ``stream`` is None)."""
        keep: list[tuple[defer.Deferred, Stream | None]] = []
        failed: list[tuple[defer.Deferred, Stream | None]] = []
        for entry in self._writers:
            (failed if stream is None or entry[1] is stream else keep).append(entry)
        self._writers = keep
        for d, _ in failed:
            d.errback(Failure(exc))

    def pause_reading(self) -> None:
        """Stop reading the socket until every pause is matched by :meth:`resume_reading`."""
        self._read_pauses += 1
        if self._read_pauses == 1 and self.connected:
            self.pauseProducing()

    def resume_reading(self) -> None:
        if self._read_pauses == 0:
            return
        self._read_pauses -= 1
        if self._read_pauses == 0 and self.connected:
            self.resumeProducing()

    # --- receiving -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if tracing.ON:
            tracing.mark("conn.recv", f"bytes={len(data)}")
        super().dataReceived(data)

    def stringReceived(self, data: bytes) -> None:
        try:
            # GetData and ChunkData payloads arrive as views of the frame: not copied again.
            routed = self._streams.route(data)
        except ProtocolViolation as exc:
            self._fail_all(exc)
            self.close()
            return
        except ServerError as refusal:
            # About the connection, not a request (ids start at 1): the node refused us.
            self.refusal = refusal
            self._fail_all(refusal)
            self.close()
            return
        if routed is None:
            return  # an aborted request's late frames
        stream, reply = routed
        if isinstance(reply, ServerError):
            stream._fail(reply)
        else:
            stream._frame(reply)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake succeeded (never called without TLS)."""
        if not self.handshake.called:
            self.handshake.callback(self)

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        self.connected = 0  # Twisted leaves it set; StorgClient checks it before reusing us
        failure = reason if isinstance(reason, Failure) else None
        if not self.handshake.called:
            if _is_tls_error(failure):
                lost: Exception = TLSHandshakeFailed(f"TLS handshake failed: {_tls_why(self, failure)}")
            else:  # a node that died or closed mid-handshake: worth trying again, elsewhere
                lost = ConnectionLost("connection lost before the TLS handshake completed")
            self.handshake.errback(Failure(lost))
            self.handshake.addErrback(lambda _: None)  # plain TCP: nobody waits on it
        if _is_tls_error(failure):
            # With TLS 1.3 a node refuses our certificate after our handshake completed: say so.
            self._fail_all(TLSHandshakeFailed(f"TLS: the node ended the connection: {_tls_why(self, failure)}"))
        else:
            self._fail_all(ConnectionLost("connection to the node was lost"))
        if not self.closed.called:
            self.closed.callback(None)

    def _fail_all(self, exc: Exception) -> None:
        for stream in self._streams.take_all():
            stream._fail(exc)
        self._fail_waiters(None, exc)

    def close(self) -> None:
        """Close after flushing; the write gate is unregistered first so the close is not held up.

        Unconditionally: over TLS the registration is held by the TCP
        transport under :class:`~storg.net.tls_stream.TLSStream`, not by the
        transport we see, and a transport with a producer registered never
        shuts down, so the connection would stay open on both ends (the node
        counts it against ``limits.max_client_connections``).  Unregistering
        when nothing is registered does nothing.
        """
        transport = self.transport
        if transport is None:
            return
        transport.unregisterProducer()
        transport.loseConnection()

    def close_connection(self) -> None:
        self.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding what is buffered (a stalled node)."""
        if self.transport is not None:
            self.transport.abortConnection()


def _is_tls_error(failure: Failure | None) -> bool:
    """Whether a connection ended with a TLS error.  :mod:`storg.net.tls` is imported only by TLS
    connections (a plain client never pays for it): if it is not loaded, this was not TLS."""
    tls = sys.modules.get("storg.net.tls")
    return failure is not None and tls is not None and tls.is_tls_failure(failure)


def _tls_why(protocol: RequestConnection, failure: Failure | None) -> str:
    if "storg.net.tls" not in sys.modules:
        return failure.getErrorMessage() if failure is not None else "connection closed"
    from storg.net.tls import describe_tls_failure
    return describe_tls_failure(protocol.transport, failure)


async def connect(reactor: Any, address: str, timeout: float = 5.0, tls: ClientTLS | None = None,
                  bind_host: str | None = None) -> RequestConnection:
    """Open a connection to a node's client port; over TLS when ``tls`` is given.

    With TLS it returns once the handshake has completed, within ``timeout``
    (TCP connect and handshake together), and fails with
    :class:`TLSHandshakeFailed`, saying why, if the node's certificate is
    refused here or ours there (with TLS 1.3 the second shows as the
    connection ending right after the handshake, with the node's alert).
    """
    host, port = split_address(address)
    protocol = RequestConnection()
    if tls is None:
        endpoint_cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        bind = (bind_host, 0) if bind_host else None
        endpoint = endpoint_cls(reactor, host, port, timeout=timeout, bindAddress=bind)
        return await connectProtocol(endpoint, protocol)
    from storg.net.tls import client_endpoint
    started = reactor.seconds()
    await connectProtocol(client_endpoint(reactor, host, port, tls, timeout=timeout, bind_host=bind_host),
                          protocol)
    handshake = protocol.handshake
    handshake.addTimeout(max(0.1, timeout - (reactor.seconds() - started)), reactor)
    try:
        await handshake
    except defer.TimeoutError:
        protocol.abort()  # a paused or overloaded node: retryable, like a connect timeout
        raise defer.TimeoutError(f"no TLS handshake with {address} within {timeout:g} s") from None
    return protocol


class Dialer:
    """How one party opens connections to nodes' client ports: plain TCP, or TLS with its credentials.

    Every outgoing client-port connection of a node (chunk copies, snapshot
    transfers, removal notices, asking the leader) goes through its dialer,
    so none can forget TLS.  ``node``, when the caller knows whom it means to
    reach, must be named by the node's certificate: an address that now
    belongs to someone else is refused in the handshake.
    ``credentials`` is a :class:`storg.net.credentials.TLSCredentials` (or
    anything with its ``client(expected_node)``); None dials plain TCP.
    """

    def __init__(self, credentials: Any = None, bind_host: str | None = None) -> None:
        self.credentials = credentials
        self.bind_host = bind_host

    @property
    def tls(self) -> bool:
        return self.credentials is not None

    async def __call__(self, reactor: Any, address: str, timeout: float = 5.0,
                       node: str | None = None) -> RequestConnection:
        options = None if self.credentials is None else self.credentials.client(node)
        return await connect(reactor, address, timeout=timeout, tls=options, bind_host=self.bind_host)


class LocalDialer(Dialer):
    """A :class:`Dialer` that reaches one address, this node's own client port, through memory.

    ``open_local()`` returns a :class:`RequestConnection` already joined to
    the node's client port (:mod:`storg.net.local_pipe`); every other
    address is dialled as :class:`Dialer` does, with ``credentials``.
    """

    def __init__(self, credentials: Any, local_address: str, local_node: str,
                 open_local: Callable[[], RequestConnection], bind_host: str | None = None) -> None:
        super().__init__(credentials, bind_host)
        self.local_address = local_address
        self.local_node = local_node
        self.open_local = open_local

    async def __call__(self, reactor: Any, address: str, timeout: float = 5.0,
                       node: str | None = None) -> RequestConnection:
        if address == self.local_address and node in (None, self.local_node):
            return self.open_local()
        return await super().__call__(reactor, address, timeout=timeout, node=node)


PLAIN = Dialer()
"""Plain TCP (a loopback cluster without TLS, and tests)."""
