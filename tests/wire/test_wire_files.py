"""File store frames: every type round-trips; damaged bytes raise CodecError only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.wire import CODEC, CodecError
from storg.wire import chunks as C
from storg.wire import files as F
from storg.wire import objects as O
from storg.wire import tree as T
from storg.wire.codec import Codec
from storg.wire.record import record
from storg.wire.schema import SHA256, U8, ListOf, Nested, layout, register_struct

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
ids = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=8)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
text = st.text(max_size=40)
blobs = st.binary(max_size=64)
chunk_refs = st.builds(F.ChunkRef, hashes, u32, st.lists(ids, max_size=3).map(tuple))
pairs = st.lists(st.tuples(text, text), max_size=3).map(tuple)
attrs = st.builds(O.ObjectAttrs, text, text, pairs, pairs, st.lists(u64, max_size=3).map(tuple), pairs)
infos = st.builds(F.FileInfo, text, u64, hashes, u64, u64, st.lists(chunk_refs, max_size=3).map(tuple), attrs)

KINDS = {
    F.PutStart: (u64, text, u64, u64), F.PutReady: (u64, u32), F.PutData: (u64, blobs),
    F.PutEnd: (u64, u64, hashes), F.PutDone: (u64, infos),
    F.GetRequest: (u64, text, st.booleans(), u64, u64),
    F.GetStart: (u64, infos, u64), F.GetData: (u64, blobs), F.GetEnd: (u64,),
    F.LsRequest: (u64, text, st.booleans(), text, u32),
    F.LsReply: (u64, st.lists(infos, max_size=3).map(tuple), st.booleans(), u64),
    F.StatRequest: (u64, text, st.booleans()), F.StatReply: (u64, infos, u64),
    F.RmRequest: (u64, text, u64, u64), F.RmDone: (u64, u64),
    C.ChunkPut: (u64, hashes, blobs), C.ChunkStored: (u64, hashes), C.ChunkGet: (u64, hashes),
    C.ChunkData: (u64, hashes, blobs),
    C.PutFileCommand: (u64, u64, u64, text, u64, hashes, st.lists(chunk_refs, max_size=3).map(tuple)),
    C.RemoveFileCommand: (u64, u64, u64, text),
    C.CollectChunksCommand: (st.lists(hashes, max_size=4).map(tuple),),
    T.MoveRequest: (u64, text, text, u64, u64, st.booleans()),
    T.CopyRequest: (u64, text, text, u64, u64, st.booleans(), st.booleans()),
    T.RemoveTreeRequest: (u64, text, u64, u64), T.TreeDone: (u64, u64),
    T.PutStartIf: (u64, text, u64, u64, st.booleans(), text),
    T.WatchRequest: (u64, text, u64),
    T.WatchEvent: (u64, u64, st.integers(0, 255), text, text, u64, text, st.booleans()),
    T.MoveCommand: (u64, u64, u64, text, text, st.booleans()),
    T.CopyCommand: (u64, u64, u64, text, text, st.booleans(), st.booleans()),
    T.RemoveTreeCommand: (u64, u64, u64, text),
    T.ConditionalPutCommand: (st.booleans(), text, blobs),
    O.PutStartObject: (u64, text, u64, u64, st.booleans(), text, text, attrs), O.PutAbort: (u64,),
    O.CopyAttrsRequest: (u64, text, text, u64, u64, st.booleans(), attrs),
    O.ComposeRequest: (u64, u64, u64, text, st.lists(text, max_size=3).map(tuple), attrs, text,
                       st.booleans(), text),
    O.S3KeyCreateRequest: (u64, u64, u64, ids, text, ids, text), O.S3KeyRevokeRequest: (u64, u64, u64, ids),
    O.S3KeyListRequest: (u64,), O.S3KeyDone: (u64, u64),
    O.S3KeyListReply: (u64, st.lists(st.builds(O.S3Key, ids, text, ids, u64), max_size=3).map(tuple)),
    O.PutObjectCommand: (st.booleans(), text, text, attrs, blobs),
    O.CopyAttrsCommand: (u64, u64, u64, text, text, st.booleans(), attrs),
    O.ComposeCommand: (u64, u64, u64, text, st.lists(text, max_size=3).map(tuple), attrs, text,
                       st.booleans(), text),
    O.S3KeyCreateCommand: (u64, u64, u64, ids, text, ids, text), O.S3KeyRevokeCommand: (u64, u64, ids),
}
frames = st.one_of(*[st.builds(cls, *args) for cls, args in KINDS.items()])


@settings(max_examples=300, deadline=None)
@given(frames)
def test_every_file_frame_round_trips(obj):
    assert CODEC.decode(CODEC.encode(obj)) == obj


@settings(max_examples=60, deadline=None)
@given(frames)
def test_every_truncation_is_a_codec_error(obj):
    data = CODEC.encode(obj)
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            CODEC.decode(data[:cut])
    with pytest.raises(CodecError):
        CODEC.decode(data + b"\x00")


@settings(max_examples=200, deadline=None)
@given(frames, st.integers(0, 10_000), st.integers(0, 255))
def test_a_changed_byte_decodes_or_raises_codec_error(obj, where, value):
    data = bytearray(CODEC.encode(obj))
    data[where % len(data)] = value
    try:
        CODEC.decode(bytes(data))
    except CodecError:
        pass


def test_tree_type_bytes_are_the_documented_ones():
    samples = {60: T.MoveRequest(1, "/a", "/b", 2, 3, True), 61: T.CopyRequest(1, "/a", "/b", 2, 3),
               62: T.RemoveTreeRequest(1, "/a", 2, 3), 63: T.TreeDone(1, 5),
               126: T.PutStartIf(1, "/a", 2, 3, True), 127: T.WatchRequest(1, "/", 9),
               125: T.WatchEvent(1, 9, T.WATCH_MOVE, "/b", "/a", 4, "ab" * 32),
               70: T.MoveCommand(1, 2, 3, "/a", "/b", False), 71: T.CopyCommand(1, 2, 3, "/a", "/b", True, False),
               72: T.RemoveTreeCommand(1, 2, 3, "/a"), 73: T.ConditionalPutCommand(True, "", b"cmd")}
    for tb, obj in samples.items():
        body = CODEC.encode(obj)
        assert CODEC.type_byte(obj) == tb
        assert CODEC.decode(body) == obj


@settings(max_examples=100, deadline=None)
@given(frames)
def test_object_frames_use_only_their_type_bytes(obj):
    """Issue 18's frames use only the type bytes given to them: 14-31 and 130-149."""
    if type(obj).__module__ == O.__name__:
        tb = CODEC.type_byte(obj)
        assert 14 <= tb <= 31 or 130 <= tb <= 149, (type(obj).__name__, tb)


def test_attributes_round_trip_alone():
    a = O.ObjectAttrs("e", "t", (("k", "v"),), (("CRC32", "x"),), (1, 2**63), (("x", ""),))
    assert O.decode_attrs(O.encode_attrs(a)) == a
    with pytest.raises(CodecError):
        O.decode_attrs(O.encode_attrs(a) + b"\x00")
    with pytest.raises(CodecError):
        O.encode_attrs(O.ObjectAttrs(metadata=(("k", "v" * 70000),)))


def test_a_forged_list_count_fails_before_allocating():
    body = bytearray(CODEC.encode(C.CollectChunksCommand(())))
    body[2:6] = (0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(CodecError, match="cannot fit"):
        CODEC.decode(bytes(body))


@pytest.mark.parametrize("bad", [
    C.ChunkGet(1, "zz" * 32), C.ChunkGet(1, "ab"), F.RmDone(-1, 0), F.RmDone(2**64, 0),
    F.PutData(1, "text, not bytes"),
])
def test_unencodable_values_raise_codec_error(bad):
    with pytest.raises(CodecError):
        CODEC.encode(bad)


def test_a_boolean_byte_other_than_0_or_1_is_refused():
    data = bytearray(CODEC.encode(F.StatRequest(1, "/a", True)))
    data[-1] = 2
    with pytest.raises(CodecError, match="boolean"):
        CODEC.decode(bytes(data))


def test_layout_must_name_every_field():
    with pytest.raises(TypeError):
        @layout(U8)
        @record
        class TwoFields:
            a: int
            b: int


def test_nested_and_list_kinds_on_a_fresh_codec():
    @layout(U8, SHA256)
    @record
    class Inner:
        n: int
        h: str

    @layout(ListOf(Nested(Inner)))
    @record
    class Outer:
        items: tuple

    codec = Codec()
    register_struct(codec, 200, Outer)
    obj = Outer((Inner(1, "00" * 32), Inner(255, "ff" * 32)))
    assert codec.decode(codec.encode(obj)) == obj
    with pytest.raises(CodecError):
        codec.encode(Outer((obj,)))
