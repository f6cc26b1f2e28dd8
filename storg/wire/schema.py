"""Declarative layouts: a frozen record (:mod:`storg.wire.record`) plus a list of field kinds is a frame type.

The file store adds a couple of dozen request, reply and command types.
Writing an encoder and a decoder by hand for each would repeat the same
lines two dozen times; instead each type lists its fields in order with a
:class:`Kind`, and :func:`register_struct` derives both functions.  The
layout is still hand-chosen and fixed: fields in declaration order, each in
the kind's byte layout, nothing self-describing on the wire.

Kinds: ``U8 U16 U32 U64`` (big-endian unsigned), ``BOOL`` (one byte, 0 or
1), ``ID`` (u8-length UTF-8), ``STR16``/``STR32`` (u16/u32-length UTF-8),
``BYTES32`` (u32-length bytes), ``SHA256`` (32 raw bytes, a lowercase hex
string in Python), ``ListOf(kind)`` (u32 count, then the items; the count is
checked against the bytes left before anything is built) and
``Nested(cls)`` (another registered struct's fields, inline) and
``STR_PAIRS`` (u32 count, then (STR16, STR16) pairs, as a tuple of 2-tuples:
name/value lists such as an object's metadata).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from storg.wire.reader import CodecError, Reader, bytes32, short_str, str16, str32
from storg.wire.record import Record, record_fields

if TYPE_CHECKING:
    from storg.wire.codec import Codec

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Kind:
    """How one field is laid out; ``min_bytes`` bounds list counts before decoding.

    ``code`` is the ``struct`` code of a fixed-size integer kind (None for
    the others): :func:`compile_reader` reads neighbouring ones in one call.
    """

    min_bytes = 1
    code: str | None = None

    def write(self, value: Any, out: list[bytes]) -> None:
        raise TypeError

    def read(self, r: Reader) -> Any:
        raise TypeError


class _Int(Kind):
    def __init__(self, st: struct.Struct) -> None:
        self.st = st
        self.code = st.format.lstrip(">")
        self.min_bytes = st.size
        self.limit = 1 << (8 * st.size)

    def write(self, value: Any, out: list[bytes]) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.limit:
            raise CodecError(f"{value!r} does not fit in {self.st.size} unsigned bytes")
        out.append(self.st.pack(value))

    def read(self, r: Reader) -> int:
        return r.unpack(self.st)[0]


class _Bool(Kind):
    def write(self, value: Any, out: list[bytes]) -> None:
        out.append(b"\x01" if value else b"\x00")

    def read(self, r: Reader) -> bool:
        b = r.u8()
        if b > 1:
            raise CodecError(f"boolean byte {b}")
        return b == 1


class _Text(Kind):
    def __init__(self, encode: Callable[[str], bytes], read_name: str, head: int) -> None:
        self.encode = encode
        self.read = getattr(Reader, read_name)  # type: ignore[method-assign]  # Reader.str16(r), unbound
        self.min_bytes = head

    def write(self, value: Any, out: list[bytes]) -> None:
        if not isinstance(value, str):
            raise CodecError(f"expected text, got {type(value).__name__}")
        out.append(self.encode(value))


class _Bytes(Kind):
    min_bytes = 4

    def write(self, value: Any, out: list[bytes]) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected bytes, got {type(value).__name__}")
        out.append(bytes32(bytes(value)))

    def read(self, r: Reader) -> bytes:
        return r.bytes32()


class _Sha256(Kind):
    min_bytes = 32

    def write(self, value: Any, out: list[bytes]) -> None:
        try:
            raw = bytes.fromhex(value)
        except (TypeError, ValueError):
            raise CodecError(f"not a hex SHA-256: {value!r}") from None
        if len(raw) != 32:
            raise CodecError(f"a SHA-256 is 32 bytes, not {len(raw)}")
        out.append(raw)

    def read(self, r: Reader) -> str:
        return r.take(32).hex()


class ListOf(Kind):
    min_bytes = 4

    def __init__(self, item: Kind) -> None:
        self.item = item

    def write(self, value: Any, out: list[bytes]) -> None:
        items = tuple(value)
        out.append(_U32.pack(len(items)))
        for item in items:
            self.item.write(item, out)

    def read(self, r: Reader) -> tuple[Any, ...]:
        count = r.u32()
        if count * self.item.min_bytes > r.remaining():
            raise CodecError(f"{count} items cannot fit in the {r.remaining()} bytes left")
        read = self.item.read
        return tuple([read(r) for _ in range(count)])


class Nested(Kind):
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields = _layout_of(cls)
        self.min_bytes = sum(k.min_bytes for _, k in self.fields)
        self._read = compile_reader(cls, self.fields)

    def write(self, value: Any, out: list[bytes]) -> None:
        if type(value) is not self.cls:
            raise CodecError(f"expected {self.cls.__name__}, got {type(value).__name__}")
        write_fields(self.fields, value, out)

    def read(self, r: Reader) -> Any:
        return self._read(r)


class _StrPairs(Kind):
    """(name, value) text pairs as plain tuples, so callers need no struct class for them."""

    min_bytes = 4

    def write(self, value: Any, out: list[bytes]) -> None:
        items = tuple(value)
        out.append(_U32.pack(len(items)))
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise CodecError(f"expected a (name, value) pair, got {item!r}")
            name, text = item
            if not isinstance(name, str) or not isinstance(text, str):
                raise CodecError(f"a pair holds text, not {type(name).__name__}/{type(text).__name__}")
            out.append(str16(name))
            out.append(str16(text))

    def read(self, r: Reader) -> tuple[tuple[str, str], ...]:
        count = r.u32()
        if count * 4 > r.remaining():
            raise CodecError(f"{count} pairs cannot fit in the {r.remaining()} bytes left")
        return tuple([(r.str16(), r.str16()) for _ in range(count)])


U8 = _Int(_U8)
U16 = _Int(_U16)
U32 = _Int(_U32)
U64 = _Int(_U64)
BOOL = _Bool()
ID = _Text(short_str, "short_str", 1)
STR16 = _Text(str16, "str16", 2)
STR32 = _Text(str32, "str32", 4)
BYTES32 = _Bytes()
SHA256 = _Sha256()
STR_PAIRS = _StrPairs()

_LAYOUTS: dict[type, list[tuple[str, Kind]]] = {}


def layout(*kinds: Kind) -> Callable[[type], type]:
    """Class decorator: give a record's fields, in order, these kinds."""

    def attach(cls: type) -> type:
        if not issubclass(cls, Record):
            raise TypeError(f"{cls.__name__} is not a record: put @layout(...) above @record")
        names = record_fields(cls)
        if len(names) != len(kinds):
            raise TypeError(f"{cls.__name__} has {len(names)} fields but {len(kinds)} kinds")
        _LAYOUTS[cls] = list(zip(names, kinds, strict=True))
        return cls

    return attach


def fields_of(cls: type) -> list[tuple[str, Kind]]:
    """The (name, kind) pairs a @layout gave ``cls``: to encode its fields without a frame header."""
    return list(_layout_of(cls))


def _layout_of(cls: type) -> list[tuple[str, Kind]]:
    try:
        return _LAYOUTS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} has no @layout") from None


def write_fields(fields: Sequence[tuple[str, Kind]], obj: Any, out: list[bytes]) -> None:
    for name, kind in fields:
        kind.write(getattr(obj, name), out)


def read_fields(cls: type, fields: Sequence[tuple[str, Kind]], r: Reader) -> Any:
    """Decode one ``cls`` field by field (the plain form of :func:`compile_reader`'s decoder)."""
    return cls(*[kind.read(r) for _, kind in fields])


def compile_reader(cls: type, fields: Sequence[tuple[str, Kind]]) -> Callable[[Reader], Any]:
    """A decoder for one layout that reads each run of integer fields with one struct call.

    Every frame goes through its type's decoder, on every node, so the
    per-field calls add up: a small put's three client frames and its
    command cost the leader about a sixth of its CPU in decoding.  The
    bytes read and the checks made are those of :func:`read_fields`
    (``Reader.unpack`` checks the whole run is there), only in fewer calls.
    """
    steps: list[tuple[struct.Struct | None, Kind | None]] = []
    run = ""
    for _, kind in fields:
        if kind.code is not None:
            run += kind.code
            continue
        if run:
            steps.append((struct.Struct(">" + run), None))
            run = ""
        steps.append((None, kind))
    if run:
        steps.append((struct.Struct(">" + run), None))
    if len(steps) == 1 and steps[0][0] is not None:
        only = steps[0][0]
        return lambda r: cls(*r.unpack(only))
    # A step's reader is None exactly where its struct is not: Any says so
    # without a check in the loop below, which runs for every frame.
    plan: list[tuple[struct.Struct | None, Any]] = [(st, None if kind is None else kind.read) for st, kind in steps]

    def read(r: Reader) -> Any:
        values: list[Any] = []
        for st, read_kind in plan:
            if st is not None:
                values += r.unpack(st)
            else:
                values.append(read_kind(r))
        return cls(*values)

    return read


def register_struct(codec: Codec, type_byte: int, cls: type) -> None:
    """Register a @layout record on ``codec`` under ``type_byte``."""
    fields = _layout_of(cls)
    codec.register(type_byte, cls,
                   lambda obj, out: write_fields(fields, obj, out),
                   compile_reader(cls, fields))
