"""Write-ahead log: round trips, segments, truncation, crashes, full disks, fsync counts."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from storg.raft.types import Entry, EntryType
from storg.storage.errors import CorruptionError, DiskFullError, StorageError
from storg.storage.wal import (
    HEADER_BYTES,
    WriteAheadLog,
    _encode_batch,
    frame_entry,
    segment_name,
)

REC = HEADER_BYTES + 21 + 10
"""Bytes of one record made by ents(): header, entry head, 10 bytes of data."""


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi + 1)]


def segments(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".wal"))


def test_batch_encoding_is_the_reference_framing() -> None:
    batch = [Entry(7, 3, EntryType.CONF_CHANGE, b"cc"), Entry(7, 4), Entry(8, 5, data=b"x" * 70_000)]
    parts, nbytes, offsets = _encode_batch(batch)
    records = [frame_entry(e) for e in batch]
    assert b"".join(parts) == b"".join(records)
    assert nbytes == sum(map(len, records))
    assert offsets == [0, len(records[0]), len(records[0]) + len(records[1])]


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
    real_fsync, real_write = os.fsync, os.write

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def write(fd: int, data: bytes) -> int:
        calls["write"] += 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "write", write)
    log.append(ents(1, 256, size=256))
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
    for name in ("fsync", "write", "writev"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    batch = ents(1, 64, size=65536)
    log.append(batch)
    assert calls == ["writev", "fsync"]
    monkeypatch.undo()
    assert log.read_all() == batch


def test_short_writev_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path)
    real = os.writev

    def short(fd: int, parts: list[bytes]) -> int:
        return real(fd, parts[:3])

    monkeypatch.setattr(os, "writev", short)
    log.append(ents(1, 8, size=65536))
    monkeypatch.undo()
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 8, size=65536)


def _last_record_offset(path: Path) -> int:
    data = path.read_bytes()
    pos = last = 0
    while pos < len(data):
        last = pos
        pos += HEADER_BYTES + int.from_bytes(data[pos:pos + 4], "big")
    return last


def test_torn_tail_is_cut_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with WriteAheadLog.open(src, segment_bytes=300) as log:
        for i in range(1, 13, 3):
            log.append(ents(i, i + 2, size=17))
    names = segments(src)
    assert len(names) >= 2
    last = src / names[-1]
    full = last.read_bytes()
    start = _last_record_offset(last)
    for cut in range(start, len(full)):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / names[-1]).write_bytes(full[:cut])
        with WriteAheadLog.open(d, segment_bytes=300) as log:
            assert log.last_index == 11
            assert log.read_all() == ents(1, 11, size=17)
            assert (d / names[-1]).stat().st_size == start
            log.append(ents(12, 13, term=2))
        with WriteAheadLog.open(d, segment_bytes=300) as log:
            assert log.read_all() == ents(1, 11, size=17) + ents(12, 13, term=2)
        shutil.rmtree(d)


def test_crash_right_after_rolling_leaves_an_empty_segment(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 4))
    (tmp_path / segment_name(5)).touch()  # created and dir-fsynced, then the crash
    with WriteAheadLog.open(tmp_path) as log:
        assert (log.first_index, log.last_index) == (1, 4)
        log.append(ents(5, 6))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 6)
    (tmp_path / segment_name(9)).touch()  # a stray segment leaves a gap
    with pytest.raises(CorruptionError, match="missing"):
        WriteAheadLog.open(tmp_path)


def test_zero_filled_tail_is_a_torn_write(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 4))
        log.append(ents(5, 6))
    seg = tmp_path / segment_name(1)
    data = bytearray(seg.read_bytes())
    start = _last_record_offset(seg)
    # The file grew but the last record's pages never reached the disk.
    data[start + 3:] = bytes(len(data) - start - 3) + bytes(4096)
    seg.write_bytes(bytes(data))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 5)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle of last segment", "last record of last segment",
                                   "last record of an earlier segment", "length field"])
def test_flipped_bit_is_corruption_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=200) as log:
        for i in range(1, 25, 4):
            log.append(ents(i, i + 3))
    names = segments(tmp_path)
    if where == "last record of an earlier segment":
        target = tmp_path / names[0]
        rec = _last_record_offset(target)
    else:
        target = tmp_path / names[-1]
        rec = _last_record_offset(target) if where == "last record of last segment" else REC
    _flip(target, rec + 1 if where == "length field" else rec + HEADER_BYTES + 20)
    with pytest.raises(CorruptionError) as info:
        WriteAheadLog.open(tmp_path, segment_bytes=200)
    err = info.value
    assert err.path == str(target)
    assert err.offset == rec
    assert str(target) in str(err) and f"offset {rec}" in str(err)
    assert "\n" not in str(err)


def test_corruption_after_open_is_detected_on_read(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as log:
        log.append(ents(1, 5))
        _flip(tmp_path / segment_name(1), 2 * REC + HEADER_BYTES + 5)
        assert log.entries(1, 3) == ents(1, 2)
        with pytest.raises(CorruptionError):
            log.entries(1, 4)


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
    real_write, real_writev = os.write, os.writev
    state = {"calls": 0}

    def full(fd: int, data: bytes) -> int:
        state["calls"] += 1
        if partial and state["calls"] == 1:
            return real_write(fd, bytes(data)[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_v(fd: int, parts: list[bytes]) -> int:
        state["calls"] += 1
        if partial:
            return real_writev(fd, parts[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(os, "writev", full_v)
    with pytest.raises(DiskFullError, match="No space left on device") as info:
        log.append(ents(4, 9, size=size))
    assert isinstance(info.value, StorageError)
    monkeypatch.undo()
    assert log.last_index == 3
    assert (tmp_path / segment_name(1)).stat().st_size == 3 * REC
    log.append(ents(4, 5))  # space came back
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 5)


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
