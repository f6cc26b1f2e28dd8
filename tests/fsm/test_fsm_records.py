"""The hand-written snapshot batch layouts: round trips, and damaged frames raise CodecError only."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.fsm.records import ChunkBatch, FileBatch, file_head, pack_file
from storg.wire import CODEC, CodecError

node_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
digests = st.binary(min_size=32, max_size=32)
u32s = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)


@st.composite
def chunk_batches(draw: st.DrawFn) -> ChunkBatch:
    sets = draw(st.lists(st.lists(node_ids, max_size=4).map(tuple), min_size=1, max_size=4))
    rows = draw(st.lists(st.tuples(digests, u32s, u64s, st.integers(0, len(sets) - 1)), max_size=20))
    return ChunkBatch(tuple(sets), tuple(rows))


paths = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
packed_files = st.builds(pack_file, u64s, digests, u64s, u64s,
                         st.lists(digests, max_size=3).map(b"".join))


@st.composite
def file_batches(draw: st.DrawFn) -> FileBatch:
    pairs = draw(st.lists(st.tuples(paths, packed_files), max_size=12))
    return FileBatch(tuple(p for p, _ in pairs), tuple(f for _, f in pairs))


def sample_chunks() -> ChunkBatch:
    d = [hashlib.sha256(b"%d" % i).digest() for i in range(3)]
    return ChunkBatch((("n1", "n2"), ("n3",)), ((d[0], 10, 1, 0), (d[1], 20, 0, 1), (d[2], 5, 2, 0)))


def sample_files() -> FileBatch:
    d = hashlib.sha256(b"x").digest()
    return FileBatch(("/a", "/é/日本", "/empty"),
                     (pack_file(10, d, 1, 2, d), pack_file(20, d, 3, 4, d + d),
                      pack_file(0, d, 5, 6, b"")))


@settings(max_examples=60, deadline=None)
@given(chunk_batches())
def test_chunk_batches_round_trip(batch: ChunkBatch) -> None:
    assert CODEC.decode(CODEC.encode(batch)) == batch


@settings(max_examples=60, deadline=None)
@given(file_batches())
def test_file_batches_round_trip(batch: FileBatch) -> None:
    decoded = CODEC.decode(CODEC.encode(batch))
    assert decoded == batch
    assert all(type(f) is bytes for f in decoded.files)
    assert [file_head(f) for f in decoded.files] == [file_head(f) for f in batch.files]


@pytest.mark.parametrize("batch", [sample_chunks(), sample_files()], ids=["chunks", "files"])
def test_every_truncation_and_extension_raises_codec_error(batch: object) -> None:
    frame = CODEC.encode(batch)
    for cut in range(len(frame)):
        with pytest.raises(CodecError):
            CODEC.decode(frame[:cut])
    with pytest.raises(CodecError, match="trailing"):
        CODEC.decode(frame + b"\0")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([sample_chunks(), sample_files()]), st.data())
def test_corrupted_bytes_raise_codec_error_or_decode(batch: object, data: st.DataObject) -> None:
    frame = bytearray(CODEC.encode(batch))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(2, len(frame) - 1), label="at")
        frame[at] = data.draw(st.integers(0, 255), label="byte")
    try:
        decoded = CODEC.decode(bytes(frame))
    except CodecError:
        return
    assert type(decoded) is type(batch)  # noqa: E721 -- the exact record kind, nothing else


def test_a_row_naming_a_missing_holder_set_is_refused() -> None:
    frame = bytearray(CODEC.encode(sample_chunks()))
    frame[-2:] = struct.pack(">H", 2)  # the last row's set index; there are two sets
    with pytest.raises(CodecError, match="holder set 2 of 2"):
        CODEC.decode(bytes(frame))


def test_a_path_that_is_not_utf8_is_refused() -> None:
    frame = CODEC.encode(sample_files())
    at = frame.index(b"/a")
    with pytest.raises(CodecError, match="UTF-8"):
        CODEC.decode(frame[:at] + b"\xff\xfe" + frame[at + 2:])


def test_paths_and_files_must_agree_in_number() -> None:
    frame = CODEC.encode(sample_files())
    fewer = frame.replace("/é/日本\x00".encode(), "/é/日本/".encode())  # two paths for three files
    with pytest.raises(CodecError, match="2 paths for 3 files"):
        CODEC.decode(fewer)


def test_an_empty_file_batch_round_trips() -> None:
    assert CODEC.decode(CODEC.encode(FileBatch((), ()))) == FileBatch((), ())


def test_forged_counts_fail_before_building_anything() -> None:
    for batch in (sample_chunks(), sample_files()):
        frame = CODEC.encode(batch)
        # The count of rows (chunks) or files sits right after the holder sets or the header.
        at = 2 + (len(frame) - 2 - 3 * 46 - 4) if isinstance(batch, ChunkBatch) else 2
        forged = frame[:at] + struct.pack(">I", 2**32 - 1) + frame[at + 4:]
        with pytest.raises(CodecError, match="cannot fit"):
            CODEC.decode(forged)


@pytest.mark.parametrize("batch", [
    ChunkBatch((("n1",),), ((b"short", 1, 1, 0),)),
    ChunkBatch((("n1",),), ((bytes(32), 1, 1, 1),)),
    ChunkBatch((("n1",),), ((bytes(32), 2**32, 1, 0),)),
    ChunkBatch((("n" * 300,),), ((bytes(32), 1, 1, 0),)),
    FileBatch(("/a",), ()),
    FileBatch(("/a",), (b"too short",)),
    FileBatch(("/a",), ("not bytes",)),
    FileBatch(("/\udc80",), (pack_file(0, bytes(32), 0, 0, b""),)),
    FileBatch(("/a\x00b", "/c"), (pack_file(0, bytes(32), 0, 0, b""),) * 2),
    FileBatch((None,), (pack_file(0, bytes(32), 0, 0, b""),)),
], ids=["short digest", "missing set", "size over u32", "long id", "counts differ", "short record",
        "record not bytes", "lone surrogate", "NUL in a path", "path not text"])
def test_unencodable_batches_raise_codec_error(batch: object) -> None:
    with pytest.raises(CodecError):
        CODEC.encode(batch)
