"""Int32 length-prefixed framing with a receive path that copies each byte once.

Twisted's ``Int32StringReceiver`` joins its whole unparsed buffer with every
read (``self._unprocessed + data``).  A 1 MiB frame arrives in many reads
of about 64 KiB, so that join copies the growing buffer again and again:
the cost is quadratic in the frame size and about doubles the CPU of a
bulk transfer.  :class:`FrameReceiver` keeps the same wire format and the
same ``stringReceived`` / ``sendString`` interface, but:

* small frames: each read is appended to a ``bytearray`` (amortised O(1)),
  headers are parsed in place with ``struct.unpack_from``, each frame is
  copied out once, and the consumed prefix is cut once per read;
* a large frame (chunk data) still incomplete after a read is collected as
  the list of reads that make it up and joined once when whole, instead of
  being appended to the buffer and then copied out of it: one copy per byte
  instead of two.  Memory copies, not syscalls, dominate a bulk transfer on
  this kind of machine (about 2 GB/s per copy).

The send side has the same concern: ``encode`` of a frame with a megabyte
of payload, then the length prefix, then the transport's own join would
copy the payload three times.  :func:`bulk_frame` builds the prefix and the
header without touching the payload, so only the transport copies it, and
:func:`decode_bulk` gives the receiver the payload as a view of the frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from storg.net.protocol import frame_bytes
from storg.wire.bulk import FRAME_HEADER
from storg.wire.codec import MAX_FRAME_BYTES

_HEADER = FRAME_HEADER
_SMALL = 4096
"""Frames up to this size are sliced directly: cheaper than a memoryview for small copies."""

LARGE_FRAME = 64 * 1024
"""A frame at least this long that a read leaves incomplete is collected piece by piece."""


class Transport(Protocol):
    """The part of a Twisted stream transport (TCP, later TLS) that storg's protocols use.

    ``Protocol.transport`` is declared as ``ITransport``, a zope interface
    whose methods are written without ``self``: without the mypy-zope
    plugin mypy cannot call them (``getPeer``, ``loseConnection``,
    ``writeSequence``), and it does not know the producer half at all.
    This spells out what the transports we run on (``tcp.Connection``,
    Twisted's ``StringTransport`` in tests) provide.
    """

    disconnecting: bool
    producer: object

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Iterable[bytes]) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class FrameReceiver(Int32StringReceiver):
    """Drop-in replacement for ``Int32StringReceiver`` (receive side rewritten).

    ``MAX_LENGTH`` defaults to the largest frame the codec can produce, not
    Twisted's 99,999 bytes.  A longer length prefix means a broken or
    hostile peer: :meth:`lengthLimitExceeded` logs one line and closes the
    connection.  Frames are not delivered while the protocol is paused
    (``pauseProducing``) or once the connection is being closed, so a
    ``stringReceived`` that closes the connection sees no further frames.

    At most one large frame is held beside the buffer: the one being
    collected (``_pieces``) or, once whole, the one waiting for delivery
    while paused (``_whole``).  Bytes after it wait in ``_rbuf``.
    """

    MAX_LENGTH = MAX_FRAME_BYTES

    # Set by makeConnection; see Transport for why it is not ITransport.
    transport: Transport | None  # type: ignore[assignment]  # ITransport's zope methods lack self
    _rbuf: bytearray | None = None
    _parsing = False
    _pieces: list[bytes | memoryview] | None = None
    _missing = 0
    _whole: bytes | None = None
    _log = Logger()

    def dataReceived(self, data: bytes) -> None:
        buf = self._rbuf
        if buf is None:
            buf = self._rbuf = bytearray()
        if self._pieces is not None:
            self._collect(data, buf)
        else:
            buf += data
        if self._parsing:
            # Re-entered from stringReceived (say, through resumeProducing):
            # the outer loop is still running and will see the new bytes.
            return
        self._parsing = True
        try:
            self._deliver(buf)
        finally:
            self._parsing = False

    def _collect(self, data: bytes, buf: bytearray) -> None:
        """Add a read to the large frame being collected; join it once it is whole."""
        pieces = self._pieces
        assert pieces is not None  # dataReceived checked it
        missing = self._missing
        if len(data) < missing:
            if data:
                pieces.append(data)
                self._missing = missing - len(data)
            return
        with memoryview(data) as view:
            pieces.append(view[:missing])
            buf += view[missing:]
            whole = b"".join(pieces)
            for piece in pieces:
                if isinstance(piece, memoryview):
                    piece.release()
        self._pieces = None
        self._missing = 0
        self._whole = whole

    def _deliver(self, buf: bytearray) -> None:
        offset = 0
        delivered = False
        unpack_from = _HEADER.unpack_from
        prefix = _HEADER.size
        max_length = self.MAX_LENGTH
        try:
            while not self.paused:
                if self._closing():
                    # Nothing more will be delivered: free the memory now.
                    buf.clear()
                    offset = 0
                    self._pieces = self._whole = None
                    return
                whole = self._whole
                if whole is not None:
                    # It came before everything now in buf.
                    self._whole = None
                    delivered = True
                    self.stringReceived(whole)
                    continue
                if self._pieces is not None:
                    return
                start = offset + prefix
                if len(buf) < start:
                    return
                (length,) = unpack_from(buf, offset)
                if length > max_length:
                    self.lengthLimitExceeded(length)
                    return
                end = start + length
                if len(buf) < end:
                    if length >= LARGE_FRAME:
                        # Collect the rest read by read (see the module docstring).
                        self._pieces = [bytes(buf[start:])]
                        self._missing = end - len(buf)
                        offset = len(buf)
                    return
                if length <= _SMALL:
                    frame = bytes(buf[start:end])
                else:
                    # One copy instead of two for large frames.  No view of
                    # buf may outlive this block: stringReceived can re-enter
                    # dataReceived, which appends to (resizes) buf.
                    with memoryview(buf) as view:
                        frame = view[start:end].tobytes()
                offset = end
                delivered = True
                self.stringReceived(frame)
        finally:
            if offset:
                del buf[:offset]
            if delivered:
                self.framesDelivered()

    def framesDelivered(self) -> None:
        """Called after the frames of one read were delivered (hook; does nothing here).

        A subclass may hold replies back until then, so a reply made moot
        by a later frame of the same read need not be sent at all.
        """

    def _closing(self) -> bool:
        transport = self.transport
        return transport is None or bool(getattr(transport, "disconnecting", False))

    def lengthLimitExceeded(self, length: int) -> None:
        """Refuse an oversized frame: one log line, then close this connection only."""
        peer = self.transport.getPeer() if self.transport is not None else None
        self._log.warn(
            "closing connection from {peer}: frame of {length} bytes exceeds the limit of {limit}",
            peer=describe_address(peer), length=length, limit=self.MAX_LENGTH)
        self.close_connection()

    def close_connection(self) -> None:
        """Close after flushing what was written; subclasses with a registered producer
        must unregister it first (a transport does not close while one is registered)."""
        transport = self.transport
        assert transport is not None  # set by makeConnection, never cleared
        transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        # A half-received frame can be megabytes; do not keep it around.
        self._rbuf = None
        self._pieces = self._whole = None
        # Twisted passes a Failure; tests may pass nothing.  Protocol's own method ignores it.
        super().connectionLost(cast(Failure, reason))


def send_bulk(transport: Any, obj: Any) -> None:
    """Write ``obj`` framed on ``transport``; a large payload of a bulk type is not copied here."""
    transport.writeSequence(frame_bytes(obj))


def describe_address(address: object) -> str:
    """``host:port`` (``[v6]:port``) of a Twisted address, for log lines."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
