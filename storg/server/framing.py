"""Int32 length-prefixed framing with a receive buffer that does not re-copy.

Twisted's ``Int32StringReceiver`` joins its whole unparsed buffer with every
read (``self._unprocessed + data``).  A 1 MiB frame arrives in many reads
of about 64 KiB, so that join copies the growing buffer again and again:
the cost is quadratic in the frame size and about doubles the CPU of a
bulk transfer.  :class:`FrameReceiver` keeps the same wire format and the
same ``stringReceived`` / ``sendString`` interface, but appends each read to
a ``bytearray`` (amortised O(1)), parses headers in place with
``struct.unpack_from``, copies each frame exactly once, and cuts the
consumed prefix once per read.
"""

from __future__ import annotations

import struct

from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from storg.wire.codec import MAX_FRAME_BYTES

_HEADER = struct.Struct("!I")
_SMALL = 4096
"""Frames up to this size are sliced directly: cheaper than a memoryview for small copies."""


class FrameReceiver(Int32StringReceiver):
    """Drop-in replacement for ``Int32StringReceiver`` (receive side rewritten).

    ``MAX_LENGTH`` defaults to the largest frame the codec can produce, not
    Twisted's 99,999 bytes.  A longer length prefix means a broken or
    hostile peer: :meth:`lengthLimitExceeded` logs one line and closes the
    connection.  Frames are not delivered while the protocol is paused
    (``pauseProducing``) or once the connection is being closed, so a
    ``stringReceived`` that closes the connection sees no further frames.
    """

    MAX_LENGTH = MAX_FRAME_BYTES

    _rbuf: bytearray | None = None
    _parsing = False
    _log = Logger()

    def dataReceived(self, data: bytes) -> None:
        buf = self._rbuf
        if buf is None:
            buf = self._rbuf = bytearray()
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

    def _deliver(self, buf: bytearray) -> None:
        offset = 0
        unpack_from = _HEADER.unpack_from
        prefix = _HEADER.size
        max_length = self.MAX_LENGTH
        try:
            while not self.paused:
                if self._closing():
                    # Nothing more will be delivered: free the memory now.
                    buf.clear()
                    offset = 0
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
                self.stringReceived(frame)
        finally:
            if offset:
                del buf[:offset]
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
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        # A half-received frame can be megabytes; do not keep it around.
        self._rbuf = None
        super().connectionLost(reason)


def describe_address(address: object) -> str:
    """``host:port`` (``[v6]:port``) of a Twisted address, for log lines."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
