"""A connection inside one process: two protocols joined by memory, without a socket or TLS.

The S3 gateway runs inside a node and reaches the data through the client
library, like any client.  Its requests to its own node used to go over a
loopback TCP connection with TLS, so the node encrypted every reply only to
decrypt it again in the same process, and paid two system calls a message
on each side.  :func:`connect_pipe` joins the client library's
:class:`~storg.net.connection.RequestConnection` to a protocol of the
node's own client port directly instead; the frames, the requests and
every check of the client port stay the same (one protocol, not a second
path into the node).  Who is on the other end is known without a
certificate: the node itself, so the client port is told its identity
(:meth:`~storg.server.client_port.ClientConnection.trust`).

Each end is a transport for its protocol.  What one end writes is handed
to the other protocol's ``dataReceived`` on a later reactor turn (never
inside the write: a protocol's reply must not re-enter the sender), as one
piece per turn, and only while the receiver reads.  Flow control is the
same as over TCP: while more than :data:`HIGH_WATER` bytes wait for a
receiver that paused, the writer's registered producer is paused, and it
is resumed once they are taken.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from zope.interface import implementer

HIGH_WATER = 1024 * 1024
"""Bytes waiting for the other end past which the writer is paused (a TCP socket buffer's worth)."""


@implementer(IAddress)
class PipeAddress:
    """The address of either end of a pipe: it has no host or port, only a name for log lines."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"PipeAddress({self.name!r})"


class PipeEnd:
    """One end's transport (the methods of :class:`storg.net.framing.Transport` and producers)."""

    def __init__(self, reactor: Any, protocol: Any, address: PipeAddress) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.address = address
        self.other: PipeEnd | None = None
        self.connected = True
        self.disconnecting = False
        """loseConnection was called here: what was written still goes out, then both ends close."""
        self._outbox: list[bytes] = []
        self._queued = 0
        self._flush_call: Any = None
        self._reading = True
        self.producer: Any = None
        self._producer_paused = False

    # -- writing ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.connected or not data:
            return
        self._outbox.append(bytes(data))
        self._queued += len(data)
        self._schedule()
        if self._queued > HIGH_WATER and self.producer is not None and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def _schedule(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        other = self.other
        if not self.connected or other is None:
            return
        if self._outbox and other.connected and other._reading:
            data = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
            self._outbox = []
            self._queued = 0
            other.protocol.dataReceived(data)
        if self._outbox:
            return  # the receiver paused: its resumeProducing flushes us again
        if self._producer_paused and self.producer is not None and self.connected:
            self._producer_paused = False
            self.producer.resumeProducing()
        if self.disconnecting and self.connected:
            self._close_both(Failure(error.ConnectionDone("the other end closed the connection")))

    # -- closing ----------------------------------------------------------------

    def loseConnection(self) -> None:
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self._schedule()

    def abortConnection(self) -> None:
        if self.connected:
            self._outbox = []
            self._queued = 0
            self._close_both(Failure(error.ConnectionAborted("the connection was aborted")))

    def _close_both(self, reason: Failure) -> None:
        ends = [self] if self.other is None else [self, self.other]
        for end in ends:
            end._lost(reason)

    def _lost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnecting = False
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._outbox = []
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(reason)

    # -- reading (this end's protocol pausing what it receives) ----------------------

    def pauseProducing(self) -> None:
        self._reading = False

    def resumeProducing(self) -> None:
        if self._reading:
            return
        self._reading = True
        if self.other is not None and self.other._outbox:
            self.other._schedule()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- the writer's producer ------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not streaming:
            raise ValueError("a pipe takes only streaming (push) producers")
        self.producer = producer
        self._producer_paused = False
        if self._queued > HIGH_WATER:
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False

    # -- addresses ---------------------------------------------------------------

    def getPeer(self) -> PipeAddress:
        return self.other.address if self.other is not None else self.address

    def getHost(self) -> PipeAddress:
        return self.address


def connect_pipe(reactor: Any, client: Any, server: Any, name: str) -> tuple[PipeEnd, PipeEnd]:
    """Join protocols ``client`` and ``server`` (both made, neither connected yet); returns their ends.

    Both get ``makeConnection`` at once, server first, as a listener's
    protocol is connected before the dialer hears of it.  ``name`` goes
    into both ends' addresses (log lines say who it was).
    """
    client_end = PipeEnd(reactor, client, PipeAddress(f"{name} (client end)"))
    server_end = PipeEnd(reactor, server, PipeAddress(f"{name} (node end)"))
    client_end.other, server_end.other = server_end, client_end
    server.makeConnection(server_end)
    client.makeConnection(client_end)
    return client_end, server_end
