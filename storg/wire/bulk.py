"""Bulk frames: a fixed header and a large payload that is never copied by us.

The frames that carry file bytes (``PutData``, ``GetData``, ``ChunkData``,
``ChunkPut``, ``ChunkPutAfter``) end with their payload.  Encoding one with
``CODEC.encode`` and then framing it copies a megabyte payload several
times; :func:`bulk_frame` builds the length prefix and header without
touching the payload, so only the transport copies it, and
:func:`decode_bulk` hands the receiver the payload as a view of the frame.
These are pure functions of bytes, so they live with the codec; writing
the result to a transport is :func:`storg.net.framing.send_bulk`.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Any

from storg.wire.codec import CODEC, MAX_FRAME_BYTES
from storg.wire.reader import CodecError
from storg.wire.record import replace

FRAME_HEADER = struct.Struct("!I")
"""The int32 length prefix of every frame (``Int32StringReceiver``'s)."""
_HEADER = FRAME_HEADER
_U32 = struct.Struct(">I")

BULK_MIN = 64 * 1024
"""Payloads at least this long go through :func:`bulk_frame` / :func:`decode_bulk`."""


@cache
def _bulk_layouts() -> dict[int, tuple[type, int]]:
    """Type byte -> (class, header length) of the frames whose last field is a bulk payload.

    Each of these layouts is fixed-size fields, then the payload as a u32
    length and its bytes (tests check that against ``CODEC.encode``), so
    the header is the encoding of the frame with an empty payload, minus
    its zero length.  Built on first use: the node-only frames'
    classes (storg.wire.chunks) are not built by a client that sends no bulk frame.
    """
    from storg.wire.chunks import ChunkData, ChunkPut, ChunkPutAfter
    from storg.wire.files import GetData, PutData

    samples = [PutData(0, b""), GetData(0, b""), ChunkData(0, "0" * 64, b""),
               ChunkPut(0, "0" * 64, b""), ChunkPutAfter(0, "0" * 64, 0, b"")]
    layouts = {}
    for sample in samples:
        body = CODEC.encode(sample)
        if not body.endswith(b"\0\0\0\0"):
            raise RuntimeError(f"{type(sample).__name__} does not end with its bulk payload")
        layouts[body[1]] = (type(sample), len(body))
    return layouts


@cache
def bulk_types() -> frozenset[type]:
    """The classes whose large payloads :func:`bulk_frame` and :func:`decode_bulk` never copy."""
    return frozenset(cls for cls, _ in _bulk_layouts().values())


def bulk_frame(obj: Any) -> list[bytes]:
    """``[length prefix + header, payload]``: the frame of ``obj`` (one of :func:`bulk_types`).

    Written with ``transport.writeSequence``, the payload is copied only by
    the transport, not by ``encode`` and ``sendString`` first.
    """
    payload = obj.data
    body = CODEC.encode(replace(obj, data=b""))
    size = len(body) + len(payload)
    if size > MAX_FRAME_BYTES:
        raise CodecError(f"{type(obj).__name__} frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    return [_HEADER.pack(size) + body[:-4] + _U32.pack(len(payload)), payload]


def decode_bulk(frame: bytes | bytearray) -> Any:
    """``CODEC.decode(frame)``, except that a large payload comes back as a view of ``frame``.

    The view keeps ``frame`` alive; hashlib, files and sockets take it as
    they take bytes.  Anything else decodes as usual.
    """
    layout = _bulk_layouts().get(frame[1]) if len(frame) >= BULK_MIN else None
    if layout is None:
        return CODEC.decode(frame)
    cls, head = layout
    if len(frame) < head:
        return CODEC.decode(frame)  # reports the truncation
    (length,) = _U32.unpack_from(frame, head - 4)
    if length != len(frame) - head:
        raise CodecError(f"{cls.__name__} payload of {length} bytes in a frame of {len(frame)}")
    obj = CODEC.decode(frame[:head - 4] + b"\0\0\0\0")
    return replace(obj, data=memoryview(frame)[head:])
