"""The bounds-checked reading of frame bytes and the length-prefixed strings every layout uses.

Apart from :mod:`storg.wire.records` (the core's types' layouts, which need
:mod:`storg.raft.types`), so that the codec and the client's frames are
built without importing the consensus core's types: a short-lived storgctl
never sends a Raft message.
"""

from __future__ import annotations

import struct


class CodecError(ValueError):
    """Bytes that are not a valid encoding: truncated, oversized, unknown type."""


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

MAX_ID_BYTES = 255
"""Node ids are at most 64 characters by config; the layout allows 255 bytes."""


class Reader:
    """A bounds-checked cursor over a bytes-like object.

    Every read checks that the bytes are there, so a decoder built from it
    cannot read past the end or trust a length it was sent.
    """

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CodecError(f"truncated: need {n} bytes at offset {self.pos}, have {self.end - self.pos}")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        """The fields of ``st``, an integer-only layout (every caller's is)."""
        if self.pos + st.size > self.end:
            raise CodecError(f"truncated: need {st.size} bytes at offset {self.pos}, have {self.end - self.pos}")
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def _prefixed(self, head: struct.Struct) -> bytes | memoryview:
        """The bytes behind a length prefix of layout ``head`` (a view if ``buf`` is one).

        The string and bytes readers below are on every decode's path (paths,
        node ids, payloads), so they read prefix and body here in one call
        rather than through ``unpack`` and ``take``.
        """
        pos = self.pos
        start = pos + head.size
        if start > self.end:
            raise CodecError(f"truncated: need {head.size} bytes at offset {pos}, have {self.end - pos}")
        (n,) = head.unpack_from(self.buf, pos)
        stop = start + n
        if stop > self.end:
            raise CodecError(f"truncated: need {n} bytes at offset {start}, have {self.end - start}")
        self.pos = stop
        return self.buf[start:stop]

    def short_str(self) -> str:
        """A UTF-8 string with a u8 length prefix (node ids)."""
        return _utf8(self._prefixed(_U8))

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def str16(self) -> str:
        """A UTF-8 string with a u16 length prefix (addresses, cluster ids)."""
        return _utf8(self._prefixed(_U16))

    def str32(self) -> str:
        """A UTF-8 string with a u32 length prefix (free text such as error messages)."""
        return _utf8(self._prefixed(_U32))

    def bytes32(self) -> bytes:
        """Opaque bytes with a u32 length prefix."""
        return bytes(self._prefixed(_U32))

    def done(self) -> None:
        """Insist that every byte was consumed: trailing garbage is an error."""
        if self.pos != self.end:
            raise CodecError(f"{self.end - self.pos} unexpected trailing bytes")


def short_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > MAX_ID_BYTES:
        raise CodecError(f"string too long to encode: {len(raw)} bytes")
    return _U8.pack(len(raw)) + raw


def _utf8(raw: bytes | memoryview) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise CodecError("string is not UTF-8") from None


def str16(s: str) -> bytes:
    """Encode ``s`` as UTF-8 behind a u16 length (at most 65,535 bytes)."""
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise CodecError(f"string too long to encode: {len(raw)} bytes")
    return _U16.pack(len(raw)) + raw


def str32(s: str) -> bytes:
    """Encode ``s`` as UTF-8 behind a u32 length."""
    return bytes32(s.encode("utf-8"))


def bytes32(b: bytes) -> bytes:
    """Encode opaque bytes behind a u32 length."""
    if len(b) > 0xFFFFFFFF:
        raise CodecError(f"bytes too long to encode: {len(b)} bytes")
    return _U32.pack(len(b)) + b
