"""Write-ahead log: round trips, segments, truncation, crashes, full disks, fsync counts."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from google_crc32c import value as crc32c

import storg.storage.wal as wal_module
from storg.raft.types import Entry, EntryType
from storg.storage.errors import CorruptionError, DiskFullError, StorageError
from storg.storage.wal import (
    DEFAULT_FILL_BYTES,
    HEADER_BYTES,
    MAGIC,
    MIN_RECORD_BYTES,
    PER_ENTRY_BYTES,
    WriteAheadLog,
    _encode_batch,
    frame_batch,
    segment_name,
)

from tests.storage.wal_files import logical_size


def rec(n: int, size: int = 10) -> int:
    """Bytes of the record for a batch of ``n`` entries of ``size`` bytes."""
    return MIN_RECORD_BYTES + n * (PER_ENTRY_BYTES + size)


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi + 1)]


def segments(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".wal"))


def reference_record(batch: list[Entry]) -> bytes:
    """The format as the module docstring states it, built the slow, obvious way."""
    body = b"".join(struct.pack(">Q", e.term) for e in batch)
    body += bytes(int(e.type) for e in batch)
    body += b"".join(struct.pack(">I", len(e.data)) for e in batch)
    body += b"".join(e.data for e in batch)
    length = 4 + 4 + 8 + 4 + len(body) + 4
    head = MAGIC + struct.pack(">IQI", length, batch[0].index if batch else 0, len(batch))
    return head + body + struct.pack(">I", crc32c(head + body))


@pytest.mark.parametrize("size", [0, 10, 70_000])
@pytest.mark.parametrize("n", [1, 3])
def test_batch_encoding_is_the_documented_format(size: int, n: int) -> None:
    batch = [Entry(2**40, 3, data=b"x" * size), Entry(7, 4, EntryType.CONF_CHANGE, b"cc"), Entry(7, 5)][:n]
    parts, nbytes, terms = _encode_batch(batch)
    expected = reference_record(batch)
    assert frame_batch(batch) == expected
    assert b"".join(parts) == expected[:-4]
    assert nbytes == len(expected) == rec(n, 0) + size + (2 if n > 1 else 0)
    assert list(terms) == [2**40, 7, 7][:n]


def test_append_writes_exactly_the_framed_batch(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 3))  # written with the next stretch of zero fill
        log.append(ents(4, 5, size=300_000))  # the big-record path, over that fill
    expected = frame_batch(ents(1, 3)) + frame_batch(ents(4, 5, size=300_000))
    data = (tmp_path / segment_name(1)).read_bytes()
    assert data[:len(expected)] == expected
    assert len(data) == rec(3) + DEFAULT_FILL_BYTES and data.count(0, len(expected)) == len(data) - len(expected)


def test_new_log_is_empty_and_starts_at_one(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path / "wal") as log:
        assert (log.first_index, log.last_index) == (1, 0)
        assert log.read_all() == []
    assert segments(tmp_path / "wal") == [segment_name(1)] == ["0000000000000001.wal"]


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    batch = ents(1, 5) + [Entry(2, 6, EntryType.CONF_CHANGE, b"\x00cc"), Entry(2, 7)]
    with WriteAheadLog.open(tmp_path) as log:
        log.append(batch[:3])
        log.append(batch[3:])
        assert log.read_all() == batch
    with WriteAheadLog.open(tmp_path) as log:
        assert (log.first_index, log.last_index) == (1, 7)
        assert log.read_all() == batch
        assert log.entries(3, 6) == batch[2:5]
        assert log.entries(4, 4) == []
        assert [log.term_at(i) for i in range(1, 8)] == [1] * 5 + [2, 2]
        with pytest.raises(IndexError):
            log.term_at(8)
        with pytest.raises(IndexError):
            log.entries(0, 3)


def test_segments_roll_and_are_named_by_first_index(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=200) as log:
        for i in range(1, 31, 3):
            log.append(ents(i, i + 2))
        names = segments(tmp_path)
        assert len(names) > 3
        assert names[0] == segment_name(1)
        assert log.read_all() == ents(1, 30)
    with WriteAheadLog.open(tmp_path, segment_bytes=200) as log:
        assert log.read_all() == ents(1, 30)
        firsts = [int(n.split(".")[0]) for n in names]
        assert all(log.entries(f, f + 1)[0].index == f for f in firsts)


def test_batch_bigger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        log.append(ents(1, 2))
        log.append(ents(3, 40))
        log.append(ents(41, 41))
        assert segments(tmp_path) == [segment_name(1), segment_name(3), segment_name(41)]
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        assert log.read_all() == ents(1, 41)


def test_append_overwrites_a_conflicting_suffix_across_segments(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=150) as log:
        for i in range(1, 21, 2):
            log.append(ents(i, i + 1))
        assert len(segments(tmp_path)) > 3
        log.append(ents(6, 8, term=3))
        expected = ents(1, 5) + ents(6, 8, term=3)
        assert log.last_index == 8
        assert log.read_all() == expected
        assert all(int(n.split(".")[0]) <= 8 for n in segments(tmp_path))
        log.append(ents(9, 9, term=3))
    with WriteAheadLog.open(tmp_path, segment_bytes=150) as log:
        assert log.read_all() == expected + ents(9, 9, term=3)


def test_truncate_everything_keeps_the_first_index(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 5))
        log.truncate(1)
        assert (log.first_index, log.last_index) == (1, 0)
        log.append(ents(1, 2, term=4))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 2, term=4)


def test_bad_appends_are_refused(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 3))
        with pytest.raises(ValueError, match="does not fit"):
            log.append(ents(5, 6))
        with pytest.raises(ValueError, match="not consecutive"):
            log.append([Entry(1, 4), Entry(1, 6)])
        with pytest.raises(ValueError, match="unknown type"):
            log.append([Entry(1, 4, 7)])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown type"):
            log.append([Entry(1, 4), Entry(1, 5, 9)])  # type: ignore[arg-type]
        log.append([])
        assert log.read_all() == ents(1, 3)


def test_compact_drops_whole_segments_only(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=150) as log:
        for i in range(1, 21, 2):
            log.append(ents(i, i + 1))
        before = segments(tmp_path)
        log.compact(9)
        after = segments(tmp_path)
        assert len(after) < len(before)
        assert 1 < log.first_index <= 10
        assert log.first_index == int(after[0].split(".")[0])
        assert log.read_all() == ents(log.first_index, 20)
        log.compact(10_000)  # never drops the segment being written
        assert len(segments(tmp_path)) == 1
        first = log.first_index
    with WriteAheadLog.open(tmp_path, segment_bytes=150) as log:
        assert log.first_index == first
        assert log.read_all() == ents(first, 20)
        with pytest.raises(ValueError):
            log.append(ents(first - 1, first))


def test_reset_leaves_a_snapshot_marker(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=150) as log:
        log.append(ents(1, 12))
        log.reset(101)
        assert (log.first_index, log.last_index) == (101, 100)
        assert segments(tmp_path) == [segment_name(101)]
    with WriteAheadLog.open(tmp_path) as log:
        assert (log.first_index, log.last_index) == (101, 100)
        with pytest.raises(ValueError):
            log.append(ents(102, 103))
        log.append(ents(101, 103, term=5))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(101, 103, term=5)


def test_one_write_and_one_fsync_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    calls = {"fsync": 0, "write": 0}
    real_fsync, real_pwrite, real_pwritev = os.fsync, os.pwrite, os.pwritev

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls["write"] += 1
        return real_pwrite(fd, data, offset)

    def pwritev(fd: int, parts: list[bytes], offset: int) -> int:
        calls["write"] += 1
        return real_pwritev(fd, parts, offset)

    for name in ("write", "writev", "ftruncate"):
        monkeypatch.setattr(os, name, lambda *a, _name=name: pytest.fail(f"append called os.{_name}"))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "pwritev", pwritev)
    log.append(ents(1, 256, size=256))  # the record and the first stretch of zero fill: still one write
    assert calls == {"fsync": 1, "write": 1}
    for k in range(10):
        log.append(ents(257 + 16 * k, 272 + 16 * k))
    assert calls == {"fsync": 11, "write": 11}
    monkeypatch.undo()
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.last_index == 256 + 160


def test_big_batch_is_one_writev_and_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    calls: list[str] = []
    for name in ("fsync", "write", "writev", "pwrite", "pwritev"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    batch = ents(1, 64, size=65536)
    log.append(batch)
    assert calls == ["pwritev", "fsync"]
    monkeypatch.undo()
    assert log.read_all() == batch
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == batch


def test_batch_with_more_parts_than_iov_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "_IOV_MAX", 7)
    batch = ents(1, 40, size=20_000)
    with WriteAheadLog.open(tmp_path) as log:
        log.append(batch)
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == batch


def test_short_writev_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    real = os.pwritev

    def short(fd: int, parts: list[bytes], offset: int) -> int:
        return real(fd, [parts[0], bytes(parts[1])[:5]], offset)

    monkeypatch.setattr(os, "pwritev", short)
    log.append(ents(1, 8, size=65536))
    monkeypatch.undo()
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 8, size=65536)


def _last_record_offset(path: Path) -> int:
    data = path.read_bytes()
    pos = last = 0
    while pos < len(data) and data[pos:pos + 4] == MAGIC:  # zeros after the records are zero fill
        last = pos
        pos += int.from_bytes(data[pos + 4:pos + 8], "big")
    return last


@pytest.mark.parametrize("over_fill", [False, True])
def test_torn_tail_is_cut_at_every_offset_of_the_last_record(tmp_path: Path, over_fill: bool) -> None:
    src = tmp_path / "src"
    with WriteAheadLog.open(src, segment_bytes=300) as log:
        for i in range(1, 13, 3):
            log.append(ents(i, i + 2, size=17))
    names = segments(src)
    assert len(names) >= 2
    last = src / names[-1]
    full = last.read_bytes()
    start = _last_record_offset(last)
    end = start + rec(3, 17)
    assert start > 0 and logical_size(last) == end and len(full) == 300  # zero fill up to segment_bytes
    for cut in range(start, end):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        # The file grew by a prefix of the record, or the record went over zero fill and only a prefix stuck.
        (d / names[-1]).write_bytes(full[:cut] + (bytes(len(full) - cut) if over_fill else b""))
        with WriteAheadLog.open(d, segment_bytes=300) as log:
            # The torn record is the whole last batch (10..12): none of it was acknowledged.
            assert log.last_index == 9
            assert log.read_all() == ents(1, 9, size=17)
            # A torn record is cut, fill and all; zeros from the record's start on are just fill.
            assert (d / names[-1]).stat().st_size == (len(full) if over_fill and cut == start else start)
            log.append(ents(10, 11, term=2))
        with WriteAheadLog.open(d, segment_bytes=300) as log:
            assert log.read_all() == ents(1, 9, size=17) + ents(10, 11, term=2)
        shutil.rmtree(d)


def test_crash_right_after_rolling_leaves_an_empty_segment(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 4))
    os.truncate(tmp_path / segment_name(1), rec(4))  # rolling cuts the zero fill first,
    (tmp_path / segment_name(5)).touch()  # then creates the new segment and fsyncs the directory; the crash
    with WriteAheadLog.open(tmp_path) as log:
        assert (log.first_index, log.last_index) == (1, 4)
        log.append(ents(5, 6))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 6)
    os.truncate(tmp_path / segment_name(5), rec(2))  # as if rolled: no fill before the next segment
    (tmp_path / segment_name(9)).touch()  # a stray segment leaves a gap
    with pytest.raises(CorruptionError, match="missing"):
        WriteAheadLog.open(tmp_path)


@pytest.mark.parametrize("zero_from", [0, 3, 10, 40])
def test_zero_filled_tail_is_a_torn_write(tmp_path: Path, zero_from: int) -> None:
    with WriteAheadLog.open(tmp_path, fill_bytes=0) as log:
        log.append(ents(1, 4))
        log.append(ents(5, 6))
    seg = tmp_path / segment_name(1)
    data = bytearray(seg.read_bytes())
    start = _last_record_offset(seg)
    assert len(data) == start + rec(2)
    # The file grew but (part of) the last record's pages never reached the disk.
    data[start + zero_from:] = bytes(len(data) - start - zero_from) + bytes(4096)
    seg.write_bytes(bytes(data))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 4)
    # Zeros from a record boundary on are zero fill, the end of the log, and stay; a torn record is cut.
    assert seg.stat().st_size == (len(data) if zero_from == 0 else start)


def test_torn_big_batch_at_the_tail_is_dropped_whole(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with WriteAheadLog.open(src) as log:
        log.append(ents(1, 3))
        log.append(ents(4, 11, size=65536))  # written payload first, CRC last
    seg = src / segment_name(1)
    full = seg.read_bytes()
    start = rec(3)
    end = start + rec(8, 65536)
    assert logical_size(seg) == end and len(full) == start + DEFAULT_FILL_BYTES  # written over the fill
    for cut in (start + 1, start + HEADER_BYTES + 5, start + 3 * 65536, end - 4, end - 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / segment_name(1)).write_bytes(full[:cut] + bytes(len(full) - cut))
        with WriteAheadLog.open(d) as log:
            assert log.read_all() == ents(1, 3)
            log.append(ents(4, 4, term=2))
        with WriteAheadLog.open(d) as log:
            assert log.read_all() == ents(1, 3) + ents(4, 4, term=2)
        shutil.rmtree(d)


def test_hole_in_a_batch_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 3))
        log.append(ents(4, 9))
        log.append(ents(10, 10))
    seg = tmp_path / segment_name(1)
    data = bytearray(seg.read_bytes())
    # The middle batch reached the disk with a page of zeros in it; a later batch did not.
    data[rec(3) + 30:rec(3) + rec(6)] = bytes(rec(6) - 30)
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="checksum mismatch") as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.offset == rec(3)
    assert seg.read_bytes() == bytes(data)  # nothing was cut


def test_format_1_log_is_refused_not_cut(tmp_path: Path) -> None:
    # Format 1: length u32, crc u32, then term, index, type, size, data per entry.
    payload = struct.pack(">QQBI", 1, 1, 0, 2) + b"ab"
    head = struct.pack(">I", len(payload))
    seg = tmp_path / segment_name(1)
    seg.write_bytes(head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head))) + payload)
    with pytest.raises(CorruptionError, match="format-2") as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.offset == 0
    assert seg.stat().st_size == 8 + len(payload)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["first record of last segment", "last record of last segment",
                                   "last record of an earlier segment", "length field", "magic",
                                   "entry count"])
def test_flipped_bit_is_corruption_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=300) as log:
        for i in range(1, 25, 4):
            log.append(ents(i, i + 3))  # two batch records per segment
    names = segments(tmp_path)
    if where == "last record of an earlier segment":
        target = tmp_path / names[0]
        offset = _last_record_offset(target)
    else:
        target = tmp_path / names[-1]
        offset = _last_record_offset(target) if where == "last record of last segment" else 0
    assert offset in (0, rec(4))
    bit = {"length field": 5, "magic": 1, "entry count": HEADER_BYTES - 1}.get(where, HEADER_BYTES + 4 * 13 + 7)
    _flip(target, offset + bit)
    with pytest.raises(CorruptionError) as info:
        WriteAheadLog.open(tmp_path, segment_bytes=300)
    err = info.value
    assert err.path == str(target)
    assert err.offset == offset
    assert str(target) in str(err) and f"offset {offset}" in str(err)
    assert "\n" not in str(err)


def test_corruption_after_open_is_detected_on_read(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 2))
        log.append(ents(3, 5))
        _flip(tmp_path / segment_name(1), rec(2) + HEADER_BYTES + 3 * 13 + 5)
        assert log.entries(1, 3) == ents(1, 2)
        with pytest.raises(CorruptionError, match="checksum") as info:
            log.entries(2, 4)
        assert info.value.offset == rec(2)


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        for i in range(1, 13, 3):
            log.append(ents(i, i + 2))
    names = segments(tmp_path)
    (tmp_path / names[1]).unlink()
    with pytest.raises(CorruptionError, match="missing"):
        WriteAheadLog.open(tmp_path, segment_bytes=100)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("size", [10, 65536])
def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      partial: bool, size: int) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.append(ents(1, 3))
    real_pwrite = os.pwrite
    state = {"calls": 0}

    def full_at(fd: int, data: bytes, offset: int) -> int:
        state["calls"] += 1
        if partial and state["calls"] == 1:  # some bytes fit, then the disk is full
            return real_pwrite(fd, bytes(data)[:max(1, len(data) // 2)], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_at)
    monkeypatch.setattr(os, "pwritev", lambda fd, parts, offset: full_at(fd, b"".join(parts), offset))
    with pytest.raises(DiskFullError, match="No space left on device") as info:
        log.append(ents(4, 9, size=size))
    assert isinstance(info.value, StorageError)
    monkeypatch.undo()
    assert log.last_index == 3
    assert (tmp_path / segment_name(1)).stat().st_size == rec(3)  # the half record went, and the fill with it
    log.append(ents(4, 5))  # space came back
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 5)


def test_full_disk_while_truncating_inside_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.append(ents(1, 6))

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DiskFullError):
        log.truncate(4)
    monkeypatch.undo()
    # The marker did not fit and nothing changed: the log stays usable without the cut
    # (a full disk is survivable here as in append), on disk and in memory alike.
    assert log.last_index == 6 and log.read_all() == ents(1, 6)
    with WriteAheadLog.open(tmp_path) as other:  # what a crash now would find
        assert other.read_all() == ents(1, 6)
    log.truncate(4)  # space came back: the cut goes through
    log.append(ents(4, 5, term=2))
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 3) + ents(4, 5, term=2)


def test_a_partial_marker_on_a_full_disk_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path, fill_bytes=0)
    log.append(ents(1, 6))
    size = (tmp_path / segment_name(1)).stat().st_size
    real_pwrite = os.pwrite

    def half(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data)[:5], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half)
    with pytest.raises(DiskFullError):
        log.truncate(4)
    monkeypatch.undo()
    assert (tmp_path / segment_name(1)).stat().st_size == size
    log.append(ents(7, 7))
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 7)


def test_a_failed_cut_of_a_partial_marker_makes_the_log_unusable(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path, fill_bytes=0)
    log.append(ents(1, 6))

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_cut(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", full)
    monkeypatch.setattr(os, "ftruncate", no_cut)
    with pytest.raises(StorageError):
        log.truncate(4)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="reopen"):
        log.append(ents(7, 7))
    log.close()


# -- truncating inside a batch record ------------------------------------------------


def test_truncate_inside_a_batch_keeps_the_prefix_across_restarts(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 3))
        log.append(ents(4, 10))
        log.truncate(6)  # inside the second batch: a marker is appended, nothing rewritten
        assert (log.last_index, log.read_all()) == (5, ents(1, 5))
        assert logical_size(seg) == rec(3) + rec(7) + MIN_RECORD_BYTES
        assert [log.term_at(i) for i in range(1, 6)] == [1] * 5
    with WriteAheadLog.open(tmp_path) as log:
        assert (log.last_index, log.read_all()) == (5, ents(1, 5))
        log.append(ents(6, 8, term=2))
        log.append(ents(7, 9, term=3))  # a conflict inside the batch just written
        expected = ents(1, 5) + ents(6, 6, term=2) + ents(7, 9, term=3)
        assert log.read_all() == expected
        assert log.entries(5, 8) == expected[4:7]
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == expected
        assert [log.term_at(i) for i in range(1, 10)] == [e.term for e in expected]
        log.truncate(4)  # the first entry of a live batch: the file is cut there
        assert seg.stat().st_size == rec(3)
        assert log.read_all() == ents(1, 3)
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 3)


def test_overwriting_a_suffix_in_the_last_segment_is_one_write_and_one_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    log = WriteAheadLog.open(src)
    log.append(ents(1, 10))
    calls: list[str] = []
    for name in ("fsync", "write", "writev", "pwrite", "pwritev", "ftruncate"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    log.append(ents(6, 8, term=2))  # replaces 6..10 by its own record
    monkeypatch.undo()
    assert calls == ["pwritev", "fsync"]
    expected = ents(1, 5) + ents(6, 8, term=2)
    assert log.read_all() == expected and log.last_index == 8
    log.append(ents(9, 9, term=2))
    log.close()
    full = (src / segment_name(1)).read_bytes()
    assert logical_size(src / segment_name(1)) == rec(10) + rec(3) + rec(1)
    with WriteAheadLog.open(src) as log:
        assert log.read_all() == expected + ents(9, 9, term=2)
    for cut in range(rec(10), rec(10) + rec(3)):  # a crash while writing the overwriting batch over the fill
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes(full[:cut] + bytes(len(full) - cut))
        with WriteAheadLog.open(d) as log:
            assert log.read_all() == ents(1, 10)
        shutil.rmtree(d)


def test_truncating_a_record_that_replaced_a_suffix_does_not_bring_the_suffix_back(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(6) + rec(2)) as log:
        log.append(ents(1, 3))
        log.append(ents(3, 3, term=2))  # replaces the old 3 by its own record
        log.truncate(3)  # at that record's start: cutting the file there would revive the old 3
        assert log.read_all() == ents(1, 2)
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(6) + rec(2)) as log:
        assert log.read_all() == ents(1, 2)
        log.append(ents(1, 6, term=3))  # replaces the whole segment in place
        log.append(ents(1, 1, term=4))  # does not fit: the segment is emptied, not rolled onto itself
        assert segments(tmp_path) == [segment_name(1)]
        assert log.read_all() == ents(1, 1, term=4)
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 1, term=4)


def test_truncate_inside_a_batch_of_an_earlier_segment(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(5) + 10) as log:
        for i in range(1, 21, 5):
            log.append(ents(i, i + 4))
        assert len(segments(tmp_path)) == 4
        log.truncate(8)
        assert segments(tmp_path) == [segment_name(1), segment_name(6)]
        log.append(ents(8, 8, term=2))  # no room beside the replaced bytes and the marker: rolls
        assert segments(tmp_path) == [segment_name(1), segment_name(6), segment_name(8)]
        assert log.read_all() == ents(1, 7) + ents(8, 8, term=2)
        log.append(ents(9, 12, term=2))
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(5) + 10) as log:
        assert log.read_all() == ents(1, 7) + ents(8, 12, term=2)


def test_crash_while_writing_a_truncation_marker(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with WriteAheadLog.open(src) as log:
        log.append(ents(1, 8))
        log.truncate(5)
    full = (src / segment_name(1)).read_bytes()
    assert logical_size(src / segment_name(1)) == rec(8) + MIN_RECORD_BYTES < len(full)  # over the fill
    for cut in range(rec(8), rec(8) + MIN_RECORD_BYTES):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / segment_name(1)).write_bytes(full[:cut] + bytes(len(full) - cut))
        with WriteAheadLog.open(d) as log:  # before the truncation: nothing acknowledged is lost
            assert log.read_all() == ents(1, 8)
        shutil.rmtree(d)
    with WriteAheadLog.open(src) as log:
        assert log.read_all() == ents(1, 4)


def test_record_that_starts_past_the_log_is_corruption(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    seg.write_bytes(frame_batch(ents(1, 2)) + frame_batch(ents(4, 5)) + frame_batch(ents(6, 6)))
    with pytest.raises(CorruptionError, match="entries from 4") as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.offset == rec(2)


def test_failed_fsync_makes_the_log_unusable_until_reopened(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    log.append(ents(1, 2))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageError, match="Input/output error"):
        log.append(ents(3, 4))
    monkeypatch.undo()
    with pytest.raises(StorageError, match="reopen"):
        log.append(ents(3, 4))
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all()[:2] == ents(1, 2)


def test_crash_after_segment_deletions_in_reset_is_reconcilable(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        for i in range(1, 13, 3):
            log.append(ents(i, i + 2))
    # A crash in reset() after deleting the newest segments leaves a prefix.
    for name in segments(tmp_path)[2:]:
        (tmp_path / name).unlink()
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        assert log.first_index == 1 and log.last_index < 50
        log.reset(51)
        log.append(ents(51, 51))
    with WriteAheadLog.open(tmp_path, segment_bytes=100) as log:
        assert log.read_all() == ents(51, 51)


def test_the_record_checksum_is_crc32c():
    """The format says CRC-32C (Castagnoli): its check value for "123456789" is 0xE3069283."""
    assert crc32c(b"123456789") == 0xE3069283
    batch = [Entry(1, 1, data=b"123456789")]
    record = wal_module.frame_batch(batch)
    assert struct.unpack(">I", record[-4:])[0] == crc32c(record[:-4])
