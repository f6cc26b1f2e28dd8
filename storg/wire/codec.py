"""The one binary codec: frame bodies for every message that crosses a socket.

A frame body is ``version u8, type u8, layout``; the peer and client
protocols put a u32 length in front (``Int32StringReceiver``).  The layout
for each type is written by hand with :mod:`struct` and big-endian
integers, so the format is stable, compact and cannot execute anything
(unlike pickle).  Every decoder checks every length against the bytes it
was given and raises :class:`CodecError` and nothing else, because a
peer's bytes are untrusted: the connection that sent them is closed and the
node keeps serving.

Type bytes:

* 1..13: Raft :class:`~storg.raft.types.Message`, type byte = ``MessageType``
  (registered by :mod:`storg.wire.raft`, a frame module, so that a process
  that sends no Raft message does not import the core's types)
* 32 Hello, 33 HelloRefused, 34 StatusRequest, 35 StatusReply, 36 ErrorReply,
  37 MemberAddress (also nested in StatusReply; on its own it is the
  ``context`` of a membership change, so every node learns the address)
* later issues register client and file messages on :data:`CODEC` with
  :meth:`Codec.register`, using bytes not taken here.
"""

from __future__ import annotations

import importlib
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from storg.wire.messages import (
    ErrorReply,
    Hello,
    HelloRefused,
    MemberAddress,
    MemberRow,
    ProbeCommand,
    ProbeRead,
    ProbeReply,
    ProbeWrite,
    StatusReply,
    StatusRequest,
)
from storg.wire.reader import CodecError, Reader, bytes32, short_str, str16, str32
from storg.wire.record import record

PROTOCOL_VERSION = 1
"""First byte of every frame body; bump it when any layout changes."""

MAX_FRAME_BYTES = 8 * 1024 * 1024
"""The largest legal frame body.

Room for an APPEND carrying a ``max_msg_bytes`` (1 MiB) batch of entries, or
a 1 MiB file chunk plus its headers, with a wide margin; the peer protocol
sets ``Int32StringReceiver.MAX_LENGTH`` to it.
"""

Encoder = Callable[[Any, list[bytes]], None]
"""Appends the layout of an object (without version and type) to a list of byte strings."""

Decoder = Callable[[Reader], Any]
"""Reads one object's layout from a Reader; raises CodecError on bad bytes."""


@record
class _Family:
    """How to encode one class: its encoder and which type byte an instance gets."""

    encoder: Encoder
    type_of: Callable[[Any], int]
    type_bytes: frozenset[int]


class Codec:
    """Encodes registered objects to frame bodies and decodes them back.

    Dispatch is by the object's exact class when encoding and by the type
    byte when decoding, so new message kinds are added by registering, not
    by editing this class.
    """

    def __init__(self) -> None:
        self._decoders: dict[int, Decoder] = {}
        self._families: dict[type, _Family] = {}
        self._on_demand: tuple[str, ...] = ()
        self._loading = threading.RLock()

    def load_on_demand(self, modules: Iterable[str]) -> None:
        """Import ``modules`` (which register frames) the first time an unknown type byte is met.

        Importing every frame module up front costs a short-lived process
        such as storgctl more than its whole request; this way a process
        pays only for the frame types it uses, and a peer's frame of a type
        this process has not imported yet still decodes.
        """
        self._on_demand += tuple(m for m in modules if m not in self._on_demand)

    def _load_pending(self) -> None:
        """Import the on-demand modules not imported yet (a thread that comes second waits)."""
        with self._loading:
            for name in self._on_demand:
                importlib.import_module(name)
            self._on_demand = ()

    def register(self, type_byte: int, cls: type, encoder: Encoder, decoder: Decoder) -> None:
        """Give ``cls`` the type byte ``type_byte``."""
        self.register_family(cls, encoder, {type_byte: decoder}, lambda _obj: type_byte)

    def register_family(
        self,
        cls: type,
        encoder: Encoder,
        decoders: Mapping[int, Decoder],
        type_of: Callable[[Any], int],
    ) -> None:
        """Spread one class over several type bytes; ``type_of`` picks an instance's byte.

        Raft's :class:`Message` is one class whose ``type`` field selects
        the type byte.  Registering a byte or a class twice is a programming
        error and raises ValueError.
        """
        if cls in self._families:
            raise ValueError(f"{cls.__name__} is already registered")
        for tb in decoders:
            if not 0 <= tb <= 0xFF:
                raise ValueError(f"type byte {tb} is not a u8")
            if tb in self._decoders:
                raise ValueError(f"type byte {tb} is already registered")
        self._decoders.update(decoders)
        self._families[cls] = _Family(encoder, type_of, frozenset(decoders))

    def type_bytes(self) -> frozenset[int]:
        """Every type byte registered (the on-demand modules' included)."""
        self._load_pending()
        return frozenset(self._decoders)

    def type_byte(self, obj: object) -> int:
        """The type byte ``obj`` would be sent with; CodecError if it has none."""
        family = self._families.get(type(obj))
        if family is None:  # a class whose frame module is not imported yet (storg.wire.raft's Message)
            self._load_pending()
            family = self._families.get(type(obj))
        if family is None:
            raise CodecError(f"no layout for {type(obj).__name__}")
        try:
            tb = family.type_of(obj)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"no type byte for {type(obj).__name__}: {exc}") from exc
        if tb not in family.type_bytes:
            raise CodecError(f"type byte {tb!r} is not registered for {type(obj).__name__}")
        return tb

    def encode(self, obj: object) -> bytes:
        """The frame body for ``obj``; CodecError if it cannot be encoded or is too big."""
        tb = self.type_byte(obj)
        parts: list[bytes] = [bytes((PROTOCOL_VERSION, tb))]
        try:
            self._families[type(obj)].encoder(obj, parts)
        except CodecError:
            raise
        except (struct.error, UnicodeError, OverflowError, TypeError, AttributeError) as exc:
            raise CodecError(f"cannot encode {type(obj).__name__}: {exc}") from exc
        size = sum(map(len, parts))
        if size > MAX_FRAME_BYTES:
            raise CodecError(f"{type(obj).__name__} frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
        return b"".join(parts)

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """The object a frame body encodes; CodecError (only) for any bad input."""
        if isinstance(data, bytes):
            return self._decode(data)
        if isinstance(data, (bytearray, memoryview)):
            try:
                view = memoryview(data).cast("B")
            except TypeError:
                raise CodecError("frame is not a contiguous byte buffer") from None
            # Release the view at once, even on error: a live export would stop
            # the caller from resizing its receive bytearray.
            with view:
                return self._decode(view)
        raise CodecError(f"cannot decode a {type(data).__name__}")

    def _decode(self, buf: bytes | memoryview) -> Any:
        if len(buf) > MAX_FRAME_BYTES:
            raise CodecError(f"frame of {len(buf)} bytes exceeds {MAX_FRAME_BYTES}")
        if len(buf) < 2:
            raise CodecError("frame shorter than its version and type bytes")
        version, tb = buf[0], buf[1]
        if version != PROTOCOL_VERSION:
            raise CodecError(f"unknown protocol version {version}")
        decoder = self._decoders.get(tb)
        if decoder is None:  # not imported yet, or unknown: only then the lock
            self._load_pending()
            decoder = self._decoders.get(tb)
        if decoder is None:
            raise CodecError(f"unknown message type {tb}")
        r = Reader(buf, 2)
        try:
            obj = decoder(r)
        except CodecError:
            raise
        except (ValueError, struct.error) as exc:
            # A safety net for registered decoders that validate by raising
            # ValueError (enum lookups, dataclass checks): still bad input.
            raise CodecError(f"bad type {tb} frame: {exc}") from exc
        r.done()
        return obj


def check_count(r: Reader, count: int, min_item_bytes: int, what: str) -> None:
    """Refuse a claimed item count that the remaining bytes cannot hold.

    Checked before the loop, so a forged count of four billion fails at once
    instead of after building a long list.
    """
    if count * min_item_bytes > r.remaining():
        raise CodecError(f"{count} {what} cannot fit in the {r.remaining()} bytes left")


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# --- Peer handshake and status ---------------------------------------------

HELLO = 32
HELLO_REFUSED = 33
STATUS_REQUEST = 34
STATUS_REPLY = 35
ERROR_REPLY = 36
MEMBER_ADDRESS = 37

_MEMBER_ADDRESS_MIN_BYTES = 1 + 2 + 2


def encode_hello(h: Hello, out: list[bytes]) -> None:
    out += (_U16.pack(h.version), str16(h.cluster_id), short_str(h.node_id), str16(h.instance_id))


def read_hello(r: Reader) -> Hello:
    return Hello(r.u16(), r.str16(), r.short_str(), r.str16())


def encode_hello_refused(h: HelloRefused, out: list[bytes]) -> None:
    out.append(str32(h.reason))


def read_hello_refused(r: Reader) -> HelloRefused:
    return HelloRefused(r.str32())


def encode_status_request(s: StatusRequest, out: list[bytes]) -> None:
    out.append(_U64.pack(s.request_id))


def read_status_request(r: Reader) -> StatusRequest:
    return StatusRequest(r.u64())


def encode_member_row(m: MemberRow, out: list[bytes]) -> None:
    out += (
        short_str(m.id), short_str(m.role), _U64.pack(m.term), short_str(m.leader),
        _U64.pack(m.commit_index), _U64.pack(m.applied_index), _U64.pack(m.last_index),
    )


def read_member_row(r: Reader) -> MemberRow:
    return MemberRow(r.short_str(), r.short_str(), r.u64(), r.short_str(), r.u64(), r.u64(), r.u64())


def encode_member_address(a: MemberAddress, out: list[bytes]) -> None:
    out += (short_str(a.id), str16(a.peer), str16(a.client))


def read_member_address(r: Reader) -> MemberAddress:
    return MemberAddress(r.short_str(), r.str16(), r.str16())


def encode_status_reply(s: StatusReply, out: list[bytes]) -> None:
    out.append(_U64.pack(s.request_id))
    encode_member_row(s.row, out)
    out.append(_U16.pack(len(s.members)))
    for member in s.members:
        encode_member_address(member, out)


def read_status_reply(r: Reader) -> StatusReply:
    request_id = r.u64()
    row = read_member_row(r)
    count = r.u16()
    check_count(r, count, _MEMBER_ADDRESS_MIN_BYTES, "members")
    return StatusReply(request_id, row, tuple([read_member_address(r) for _ in range(count)]))


def encode_error_reply(e: ErrorReply, out: list[bytes]) -> None:
    out += (_U64.pack(e.request_id), _U16.pack(e.code), str32(e.message), str16(e.leader))


def read_error_reply(r: Reader) -> ErrorReply:
    return ErrorReply(r.u64(), r.u16(), r.str32(), r.str16())


# --- Probes: a write and a read through consensus that change nothing -------

PROBE_WRITE = 38
PROBE_READ = 39
PROBE_REPLY = 40
PROBE_COMMAND = 64
"""Type bytes from 64 up are state machine commands (log entry payloads)."""


def encode_probe_write(p: ProbeWrite, out: list[bytes]) -> None:
    out += (_U64.pack(p.request_id), bytes32(p.payload))


def read_probe_write(r: Reader) -> ProbeWrite:
    return ProbeWrite(r.u64(), r.bytes32())


def encode_probe_read(p: ProbeRead, out: list[bytes]) -> None:
    out.append(_U64.pack(p.request_id))


def read_probe_read(r: Reader) -> ProbeRead:
    return ProbeRead(r.u64())


def encode_probe_reply(p: ProbeReply, out: list[bytes]) -> None:
    out += (_U64.pack(p.request_id), _U64.pack(p.index))


def read_probe_reply(r: Reader) -> ProbeReply:
    return ProbeReply(r.u64(), r.u64())


def encode_probe_command(p: ProbeCommand, out: list[bytes]) -> None:
    out.append(bytes32(p.payload))


def read_probe_command(r: Reader) -> ProbeCommand:
    return ProbeCommand(r.bytes32())


def _build() -> Codec:
    codec = Codec()
    codec.register(HELLO, Hello, encode_hello, read_hello)
    codec.register(HELLO_REFUSED, HelloRefused, encode_hello_refused, read_hello_refused)
    codec.register(STATUS_REQUEST, StatusRequest, encode_status_request, read_status_request)
    codec.register(STATUS_REPLY, StatusReply, encode_status_reply, read_status_reply)
    codec.register(ERROR_REPLY, ErrorReply, encode_error_reply, read_error_reply)
    codec.register(MEMBER_ADDRESS, MemberAddress, encode_member_address, read_member_address)
    codec.register(PROBE_WRITE, ProbeWrite, encode_probe_write, read_probe_write)
    codec.register(PROBE_READ, ProbeRead, encode_probe_read, read_probe_read)
    codec.register(PROBE_REPLY, ProbeReply, encode_probe_reply, read_probe_reply)
    codec.register(PROBE_COMMAND, ProbeCommand, encode_probe_command, read_probe_command)
    return codec


CODEC = _build()
"""The codec for the whole program; register new message kinds on it."""
