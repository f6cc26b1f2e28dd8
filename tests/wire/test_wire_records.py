"""The length-prefixed string and bytes helpers added beside Reader."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.raft.types import Entry, EntryType
from storg.wire.records import (
    CodecError,
    Reader,
    bytes32,
    encode_entry,
    read_entries,
    read_entry,
    str16,
    str32,
)

entries = st.builds(
    Entry, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.sampled_from(EntryType), st.binary(max_size=40)
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=300))
def test_wide_strings_and_bytes_round_trip(s: str, b: bytes) -> None:
    data = str16(s) + str32(s) + bytes32(b)
    r = Reader(memoryview(data))
    assert r.str16() == s
    assert r.str32() == s
    assert r.bytes32() == b
    r.done()


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=50))
def test_truncated_wide_strings_are_rejected(s: str) -> None:
    for encode, read in ((str16, Reader.str16), (str32, Reader.str32)):
        data = encode(s)
        for cut in range(len(data)):
            with pytest.raises(CodecError):
                read(Reader(data[:cut]))


def test_str16_refuses_more_than_65535_bytes() -> None:
    assert len(str16("a" * 0xFFFF)) == 2 + 0xFFFF
    with pytest.raises(CodecError):
        str16("a" * 0x10000)


def test_bad_utf8_in_wide_strings_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="UTF-8"):
        Reader(b"\x00\x01\xff").str16()
    with pytest.raises(CodecError, match="UTF-8"):
        Reader(b"\x00\x00\x00\x02\xc3\x28").str32()


def test_u32() -> None:
    assert Reader(b"\x01\x02\x03\x04").u32() == 0x01020304
    with pytest.raises(CodecError):
        Reader(b"\x01\x02\x03").u32()


@settings(max_examples=200, deadline=None)
@given(st.lists(entries, max_size=8))
def test_read_entries_round_trips(es: list[Entry]) -> None:
    data = b"".join(map(encode_entry, es)) + b"tail"
    r = Reader(memoryview(data))
    assert read_entries(r, len(es)) == tuple(es)
    assert r.take(4) == b"tail"
    r.done()


def _one_by_one(data: bytes, count: int) -> tuple[tuple[Entry, ...], int] | None:
    r = Reader(data)
    try:
        return tuple(read_entry(r) for _ in range(count)), r.pos
    except CodecError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, max_size=4), st.binary(max_size=60), st.integers(0, 8), st.data())
def test_read_entries_agrees_with_read_entry(es: list[Entry], noise: bytes, count: int, data: st.DataObject) -> None:
    """On any bytes (valid, cut, corrupted), the fast loop behaves like read_entry."""
    buf = bytearray(b"".join(map(encode_entry, es)) + noise)
    if buf:
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    raw = bytes(buf[:cut])
    expected = _one_by_one(raw, count)
    r = Reader(raw)
    if expected is None:
        with pytest.raises(CodecError):
            read_entries(r, count)
    else:
        assert (read_entries(r, count), r.pos) == expected


def test_read_entries_refuses_a_huge_count_at_once() -> None:
    with pytest.raises(CodecError, match="cannot fit"):
        read_entries(Reader(bytes(100)), 0xFFFFFFFF)
