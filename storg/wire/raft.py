"""Raft's messages on the wire: type bytes 1..13, one per :class:`~storg.raft.types.MessageType`.

A frame module of its own (in :data:`storg.wire.FRAME_MODULES`), not part
of :mod:`storg.wire.codec`: building the core's types costs a short-lived
storgctl, which never sends a Raft message, several milliseconds.  The
codec imports this module the first time it meets one of these type bytes
or a :class:`~storg.raft.types.Message` to encode.

Layout (the same for every MessageType, so every field round-trips
whatever the type): frm (u8 len + UTF-8), to (same), term u64, log_term
u64, index u64, commit u64, reject_hint u64, hint_term u64, flags u8 (bit
0 reject, bit 1 snapshot present), context (u32 len + bytes), n_entries
u32, entries (layout of :mod:`storg.wire.records`), then the snapshot meta
when flag bit 1 is set.
"""

from __future__ import annotations

import struct
from functools import partial

from storg.raft.types import Message, MessageType
from storg.wire.codec import CODEC
from storg.wire.records import (
    CodecError,
    Reader,
    bytes32,
    encode_entry,
    encode_snapshot_meta,
    read_entries,
    read_snapshot_meta,
    short_str,
)

_MSG_INTS = struct.Struct(">QQQQQQB")
_U32 = struct.Struct(">I")
_FLAG_REJECT = 1
_FLAG_SNAPSHOT = 2
_KNOWN_FLAGS = _FLAG_REJECT | _FLAG_SNAPSHOT


def encode_message(m: Message, out: list[bytes]) -> None:
    """Every field, whatever the type, so a message always round-trips exactly."""
    flags = (_FLAG_REJECT if m.reject else 0) | (_FLAG_SNAPSHOT if m.snapshot is not None else 0)
    out.append(short_str(m.frm))
    out.append(short_str(m.to))
    out.append(_MSG_INTS.pack(m.term, m.log_term, m.index, m.commit, m.reject_hint, m.hint_term, flags))
    out.append(bytes32(m.context))
    out.append(_U32.pack(len(m.entries)))
    out.extend(map(encode_entry, m.entries))
    if m.snapshot is not None:
        out.append(encode_snapshot_meta(m.snapshot))


def read_message(kind: MessageType, r: Reader) -> Message:
    """``kind`` comes from the type byte (bound with functools.partial at registration)."""
    frm = r.short_str()
    to = r.short_str()
    term, log_term, index, commit, reject_hint, hint_term, flags = r.unpack(_MSG_INTS)
    if flags & ~_KNOWN_FLAGS:
        raise CodecError(f"unknown message flags {flags:#x}")
    context = r.bytes32()
    entries = read_entries(r, r.u32())
    snapshot = read_snapshot_meta(r) if flags & _FLAG_SNAPSHOT else None
    return Message(
        type=kind, frm=frm, to=to, term=term, log_term=log_term, index=index,
        entries=entries, commit=commit, reject=bool(flags & _FLAG_REJECT),
        reject_hint=reject_hint, hint_term=hint_term, context=context, snapshot=snapshot,
    )


CODEC.register_family(
    Message,
    encode_message,
    {int(kind): partial(read_message, kind) for kind in MessageType},
    lambda m: int(m.type),
)
