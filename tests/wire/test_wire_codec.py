"""Property tests for the one codec: round trips and hostile bytes.

Every decoding failure must be a CodecError (pytest.raises lets any other
exception through, failing the test), must come quickly, and must not
allocate more than the input implies.
"""

from __future__ import annotations

import array
import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storg.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMeta,
)
from storg.wire import (
    CODEC,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Codec,
    CodecError,
    ErrorCode,
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
from storg.wire.records import Reader

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u64 = st.integers(0, 2**64 - 1)
node_ids = st.text(max_size=16)  # any Unicode: the layout allows 255 UTF-8 bytes
medium_text = st.text(max_size=40)
free_text = st.text(max_size=120)

entries = st.builds(Entry, u64, u64, st.sampled_from(EntryType), st.binary(max_size=32))
conf_states = st.builds(
    ConfState, st.frozensets(node_ids, max_size=4), st.frozensets(node_ids, max_size=4)
)
snapshot_metas = st.builds(SnapshotMeta, u64, u64, conf_states)

raft_messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    frm=node_ids,
    to=node_ids,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=6).map(tuple),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    hint_term=u64,
    context=st.binary(max_size=40),
    snapshot=st.none() | snapshot_metas,
)

member_rows = st.builds(MemberRow, node_ids, node_ids, u64, node_ids, u64, u64, u64)
member_addresses = st.builds(MemberAddress, node_ids, medium_text, medium_text)

other_messages = st.one_of(
    st.builds(Hello, u16, medium_text, node_ids, medium_text),
    st.builds(HelloRefused, free_text),
    st.builds(StatusRequest, u64),
    st.builds(StatusReply, u64, member_rows, st.lists(member_addresses, max_size=5).map(tuple)),
    st.builds(ErrorReply, u64, st.sampled_from(ErrorCode) | u16, free_text, medium_text),
    member_addresses,
    st.builds(ProbeWrite, u64, st.binary(max_size=64)),
    st.builds(ProbeRead, u64),
    st.builds(ProbeReply, u64, u64),
    st.builds(ProbeCommand, st.binary(max_size=64)),
)

all_messages = raft_messages | other_messages

import storg.fsm.records  # noqa: E402,F401  (registers the snapshot records: every frame type is known below)

REGISTERED = sorted(CODEC.type_bytes())


def decodes_or_codec_error(data: bytes | memoryview) -> None:
    """Decoding may succeed or raise CodecError; anything else propagates and fails."""
    try:
        CODEC.decode(data)
    except CodecError:
        pass


# --- round trips ------------------------------------------------------------


@SETTINGS
@given(raft_messages)
def test_raft_message_round_trips(m: Message) -> None:
    data = CODEC.encode(m)
    assert data[0] == PROTOCOL_VERSION
    assert data[1] == int(m.type)
    assert CODEC.decode(data) == m


@SETTINGS
@given(other_messages)
def test_other_message_round_trips(m: object) -> None:
    data = CODEC.encode(m)
    assert data[0] == PROTOCOL_VERSION
    assert data[1] >= 32
    assert CODEC.decode(data) == m


@FEW
@given(all_messages)
def test_decode_accepts_memoryview_bytearray_and_offset_views(m: object) -> None:
    data = CODEC.encode(m)
    assert CODEC.decode(memoryview(data)) == m
    assert CODEC.decode(bytearray(data)) == m
    framed = b"\x00\x00\x00\x07" + data + b"tail"
    assert CODEC.decode(memoryview(framed)[4:4 + len(data)]) == m


def test_each_message_type_has_its_own_type_byte() -> None:
    for kind in MessageType:
        assert CODEC.encode(Message(kind, "a", "b"))[1] == int(kind)
    row = MemberRow("n1", "leader", 1, "n1", 2, 3, 4)
    frames = {
        32: Hello(1, "c", "n1", "i"),
        33: HelloRefused("other cluster"),
        34: StatusRequest(7),
        35: StatusReply(7, row, ()),
        36: ErrorReply(7, ErrorCode.NOT_LEADER, "not leader", "127.0.0.1:8002"),
        37: MemberAddress("n4", "127.0.0.1:7004", "127.0.0.1:8004"),
    }
    for tb, obj in frames.items():
        assert CODEC.encode(obj)[1] == tb


def test_long_strings_use_wide_length_prefixes() -> None:
    """Addresses and messages longer than 255 bytes must still fit."""
    addr = "h" * 300 + ":8001"
    reply = StatusReply(1, MemberRow("n1", "follower", 2, "n2", 3, 3, 4), (MemberAddress("n2", addr, addr),))
    assert CODEC.decode(CODEC.encode(reply)) == reply
    err = ErrorReply(1, ErrorCode.INTERNAL, "x" * 100_000, addr)
    assert CODEC.decode(CODEC.encode(err)) == err


def test_append_at_max_msg_bytes_fits_in_a_frame() -> None:
    batch = tuple(Entry(5, i, EntryType.NORMAL, bytes(1024)) for i in range(1, 1025))
    one_big = (Entry(5, 1, EntryType.NORMAL, bytes(1024 * 1024)),)
    for es in (batch, one_big):
        m = Message(MessageType.APPEND, "n1", "n2", term=5, entries=es)
        data = CODEC.encode(m)
        assert len(data) < MAX_FRAME_BYTES
        assert CODEC.decode(data) == m


# --- hostile bytes ----------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_codec_error(data: bytes) -> None:
    decodes_or_codec_error(data)


@SETTINGS
@given(st.sampled_from(REGISTERED), st.binary(max_size=300))
def test_random_body_behind_a_valid_header(tb: int, body: bytes) -> None:
    decodes_or_codec_error(bytes((PROTOCOL_VERSION, tb)) + body)


@SETTINGS
@given(all_messages)
def test_every_truncation_is_rejected(m: object) -> None:
    data = memoryview(CODEC.encode(m))
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            CODEC.decode(data[:cut])


@FEW
@given(all_messages)
def test_every_single_byte_extension_is_rejected(m: object) -> None:
    data = CODEC.encode(m)
    for extra in range(256):
        with pytest.raises(CodecError):
            CODEC.decode(data + bytes((extra,)))


@SETTINGS
@given(all_messages, st.data())
def test_a_flipped_byte_decodes_or_raises_codec_error(m: object, data: st.DataObject) -> None:
    enc = bytearray(CODEC.encode(m))
    pos = data.draw(st.integers(2, len(enc) - 1), label="pos")
    enc[pos] = data.draw(u8, label="value")
    decodes_or_codec_error(bytes(enc))


@FEW
@given(all_messages)
def test_unknown_version_is_rejected(m: object) -> None:
    data = CODEC.encode(m)
    for version in range(256):
        if version != PROTOCOL_VERSION:
            with pytest.raises(CodecError, match="version"):
                CODEC.decode(bytes((version,)) + data[1:])


@FEW
@given(all_messages)
def test_unknown_type_is_rejected(m: object) -> None:
    data = CODEC.encode(m)
    for tb in range(256):
        if tb not in REGISTERED:
            with pytest.raises(CodecError, match="type"):
                CODEC.decode(data[:1] + bytes((tb,)) + data[2:])


def _raft_length_offsets(m: Message) -> list[int]:
    """Offsets of the u32 length fields in an encoded Raft message (see codec.py)."""
    pos = 2 + 1 + len(m.frm.encode()) + 1 + len(m.to.encode()) + 6 * 8 + 1
    offsets = [pos]  # len(context)
    pos += 4 + len(m.context)
    offsets.append(pos)  # n_entries
    pos += 4
    for e in m.entries:
        offsets.append(pos + 17)  # len(entry.data)
        pos += 21 + len(e.data)
    return offsets


@SETTINGS
@given(raft_messages, st.data())
def test_corrupted_raft_length_fields_are_rejected(m: Message, data: st.DataObject) -> None:
    enc = bytearray(CODEC.encode(m))
    offsets = _raft_length_offsets(m)
    pos = data.draw(st.sampled_from(offsets), label="offset")
    value = data.draw(st.sampled_from([0xFFFFFFFF, 0x80000000, len(enc)]), label="value")
    struct.pack_into(">I", enc, pos, value)
    with pytest.raises(CodecError):
        CODEC.decode(bytes(enc))


@SETTINGS
@given(st.builds(StatusReply, u64, member_rows, st.lists(member_addresses, max_size=5).map(tuple)))
def test_corrupted_member_count_is_rejected(reply: StatusReply) -> None:
    enc = bytearray(CODEC.encode(reply))
    row = reply.row
    pos = 2 + 8 + sum(1 + len(s.encode()) for s in (row.id, row.role, row.leader)) + 4 * 8
    assert struct.unpack_from(">H", enc, pos)[0] == len(reply.members)
    struct.pack_into(">H", enc, pos, 0xFFFF)
    with pytest.raises(CodecError):
        CODEC.decode(bytes(enc))


@FEW
@given(st.builds(ErrorReply, u64, u16, free_text, medium_text))
def test_corrupted_error_message_length_is_rejected(err: ErrorReply) -> None:
    enc = bytearray(CODEC.encode(err))
    struct.pack_into(">I", enc, 2 + 8 + 2, 0xFFFFFFFF)
    with pytest.raises(CodecError):
        CODEC.decode(bytes(enc))


def test_unknown_flag_bits_are_rejected() -> None:
    m = Message(MessageType.APPEND_RESP, "a", "b")
    enc = bytearray(CODEC.encode(m))
    flags_at = 2 + 2 + 2 + 6 * 8
    assert enc[flags_at] == 0
    enc[flags_at] = 4
    with pytest.raises(CodecError, match="flags"):
        CODEC.decode(bytes(enc))


def test_unknown_entry_type_is_rejected() -> None:
    m = Message(MessageType.APPEND, "a", "b", entries=(Entry(1, 1),))
    enc = bytearray(CODEC.encode(m))
    enc[_raft_length_offsets(m)[-1] - 1] = 9  # the entry's type byte
    with pytest.raises(CodecError, match="entry type"):
        CODEC.decode(bytes(enc))


def test_invalid_utf8_is_rejected() -> None:
    enc = bytearray(CODEC.encode(Hello(1, "cc", "n1", "ii")))
    enc[-1] = 0xFF  # last byte of instance_id
    with pytest.raises(CodecError, match="UTF-8"):
        CODEC.decode(bytes(enc))


@pytest.mark.parametrize("frame", [b"", b"\x01", bytes((PROTOCOL_VERSION,))])
def test_frames_without_a_header_are_rejected(frame: bytes) -> None:
    with pytest.raises(CodecError):
        CODEC.decode(frame)


def test_huge_claimed_entry_count_fails_fast_without_allocating() -> None:
    m = Message(MessageType.APPEND, "n1", "n2", term=1, entries=(Entry(1, 1, EntryType.NORMAL, b"x"),))
    enc = bytearray(CODEC.encode(m))
    struct.pack_into(">I", enc, _raft_length_offsets(m)[1], 0xFFFFFFFF)
    frame = bytes(enc)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(CodecError, match="entries"):
            CODEC.decode(frame)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 64 * 1024


def test_huge_claimed_lengths_fail_fast_without_allocating() -> None:
    """A u32 length of 4 GiB in a short frame must not be trusted."""
    frames = [
        bytes((PROTOCOL_VERSION, 33)) + b"\xff\xff\xff\xff" + b"abc",  # HelloRefused reason
        bytes((PROTOCOL_VERSION, 36)) + bytes(10) + b"\xff\xff\xff\xff",  # ErrorReply message
    ]
    tracemalloc.start()
    try:
        for frame in frames:
            with pytest.raises(CodecError, match="truncated"):
                CODEC.decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_oversized_frames_are_rejected_both_ways() -> None:
    with pytest.raises(CodecError, match="exceeds"):
        CODEC.decode(bytes((PROTOCOL_VERSION, 1)) + bytes(MAX_FRAME_BYTES))
    big = Message(MessageType.APPEND, "a", "b", entries=(Entry(1, 1, EntryType.NORMAL, bytes(MAX_FRAME_BYTES)),))
    with pytest.raises(CodecError, match="exceeds"):
        CODEC.encode(big)


@pytest.mark.parametrize("data", ["text", None, 42, [1, 2]])
def test_non_bytes_input_is_a_codec_error(data: object) -> None:
    with pytest.raises(CodecError):
        CODEC.decode(data)  # type: ignore[arg-type]


def test_non_contiguous_view_is_a_codec_error_and_other_formats_are_bytes() -> None:
    data = CODEC.encode(StatusRequest(3))
    with pytest.raises(CodecError, match="contiguous"):
        CODEC.decode(memoryview(data + data)[::2])
    assert len(data) % 2 == 0
    assert CODEC.decode(memoryview(array.array("H", data))) == StatusRequest(3)


def test_failed_decode_releases_a_bytearray_buffer() -> None:
    """A receive buffer must stay resizable after a bad frame (no live export)."""
    buf = bytearray(b"\x01\x01garbage")
    with pytest.raises(CodecError):
        CODEC.decode(buf)
    del buf[:2]
    buf += b"more"
    assert bytes(buf) == b"garbagemore"


# --- encoding errors and the registry ---------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        Message(MessageType.VOTE, "x" * 256, "b"),  # id longer than 255 bytes
        Message(MessageType.VOTE, "a", "b", term=-1),
        Message(MessageType.VOTE, "a", "b", term=2**64),
        Message(MessageType.VOTE, "\ud800", "b"),  # not encodable as UTF-8
        Message(99, "a", "b"),  # type: ignore[arg-type]
        Message(MessageType.APPEND, "a", "b", entries=("not an entry",)),  # type: ignore[arg-type]
        Hello(70000, "c", "n", "i"),
        MemberRow("n1", "leader", 1, "n1", 1, 1, 1),  # nested layout, not a frame
        StatusReply(1, MemberRow("n", "r", 1, "", 1, 1, 1), (MemberAddress("n", "p" * 70000, "c"),)),
        object(),
    ],
)
def test_unencodable_objects_raise_codec_error(obj: object) -> None:
    with pytest.raises(CodecError):
        CODEC.encode(obj)


def test_registering_a_new_kind_on_a_fresh_codec() -> None:
    class Ping:
        def __init__(self, n: int) -> None:
            self.n = n

    def enc(p: Ping, out: list) -> None:
        out.append(struct.pack(">Q", p.n))

    def dec(r: Reader) -> Ping:
        return Ping(r.u64())

    codec = Codec()
    codec.register(200, Ping, enc, dec)
    assert codec.encode(Ping(5)) == bytes((PROTOCOL_VERSION, 200)) + struct.pack(">Q", 5)
    assert codec.decode(codec.encode(Ping(5))).n == 5
    with pytest.raises(ValueError):
        codec.register(200, int, enc, dec)
    with pytest.raises(ValueError):
        codec.register(201, Ping, enc, dec)
    with pytest.raises(ValueError):
        codec.register(256, float, enc, dec)
    with pytest.raises(CodecError):
        CODEC.decode(codec.encode(Ping(5)))  # the program's codec does not know it


def test_a_registered_decoder_raising_value_error_becomes_codec_error() -> None:
    class Strict:
        pass

    def dec(r: Reader) -> Strict:
        ErrorCode(r.u8())  # ValueError for an unknown code
        return Strict()

    codec = Codec()
    codec.register(40, Strict, lambda _o, out: out.append(b"\x01"), dec)
    with pytest.raises(CodecError):
        codec.decode(bytes((PROTOCOL_VERSION, 40, 77)))
    assert isinstance(codec.decode(bytes((PROTOCOL_VERSION, 40, 1))), Strict)
