"""Write-ahead log zero fill: records overwrite zeros fsynced ahead of time.

Recovery of fill and of torn writes over it, trimming on roll, crashes between
the steps of every mutation, full disks while extending the fill, and logs
written before the fill existed.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import storg.storage.wal as wal_module
from storg.raft.types import Entry, EntryType
from storg.storage.errors import CorruptionError, DiskFullError
from storg.storage.wal import (
    FILL_MAX_RECORD_BYTES,
    MIN_RECORD_BYTES,
    PER_ENTRY_BYTES,
    SECTOR_BYTES,
    WriteAheadLog,
    frame_batch,
    segment_name,
)

from tests.storage.wal_files import logical_size

FILL = 4096


def rec(n: int, size: int = 10) -> int:
    return MIN_RECORD_BYTES + n * (PER_ENTRY_BYTES + size)


def ents(lo: int, hi: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251 + 1]) * size) for i in range(lo, hi + 1)]


def wal_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".wal"))


def is_zero(data: bytes) -> bool:
    return data.count(0) == len(data)


# -- fill at the tail ----------------------------------------------------------------------------


def test_fill_is_written_with_the_record_and_reopens_to_the_same_entries(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        log.append(ents(1, 3))
        assert seg.stat().st_size == rec(3) + FILL  # the record, then FILL bytes of zeros
        log.append(ents(4, 9))
        assert seg.stat().st_size == rec(3) + FILL  # written over the fill
    data = seg.read_bytes()
    assert data[:rec(3) + rec(6)] == frame_batch(ents(1, 3)) + frame_batch(ents(4, 9))
    assert is_zero(data[rec(3) + rec(6):])
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        assert log.read_all() == ents(1, 9)
        assert seg.stat().st_size == rec(3) + FILL  # recovery keeps the fill: nothing was torn
        log.append(ents(10, 12))
        assert seg.stat().st_size == rec(3) + FILL
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 12)


def test_a_record_that_does_not_fit_the_fill_brings_more(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    with WriteAheadLog.open(tmp_path, fill_bytes=100) as log:
        log.append(ents(1, 1))
        log.append(ents(2, 6))  # bigger than the fill left: written past it, with fresh fill behind
        assert seg.stat().st_size == rec(1) + rec(5) + 100
        log.append(ents(7, 10, size=15_000))  # a batch bigger than the step just goes past, with its fill
        end = rec(1) + rec(5) + rec(4, 15_000)
        assert seg.stat().st_size == end + 100 and logical_size(seg) == end
    with WriteAheadLog.open(tmp_path, fill_bytes=100) as log:
        assert log.read_all() == ents(1, 6) + ents(7, 10, size=15_000)


def test_fill_stops_at_the_segment_size_and_big_records_get_none(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(3) + 50, fill_bytes=FILL) as log:
        log.append(ents(1, 3))
        assert (tmp_path / segment_name(1)).stat().st_size == rec(3) + 50
        big = ents(4, 4, size=FILL_MAX_RECORD_BYTES)
        log.append(big)  # rolls; too big to be worth zeros ahead of it
        assert (tmp_path / segment_name(4)).stat().st_size == rec(1, FILL_MAX_RECORD_BYTES)
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(3) + 50, fill_bytes=0) as log:  # no fill: exact files
        log.append(ents(5, 5))
        assert (tmp_path / segment_name(5)).stat().st_size == rec(1)
        assert log.read_all() == ents(1, 3) + big + ents(5, 5)


def test_a_log_written_before_the_fill_opens_and_then_appends_with_fill(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    seg.write_bytes(frame_batch(ents(1, 3)) + frame_batch(ents(4, 5)))  # exactly what the old code wrote
    (tmp_path / segment_name(6)).write_bytes(frame_batch(ents(6, 8)))
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        assert log.read_all() == ents(1, 8)
        log.append(ents(9, 10))
    tail = tmp_path / segment_name(6)
    assert tail.stat().st_size == rec(3) + rec(2) + FILL
    assert seg.stat().st_size == rec(3) + rec(2)
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        assert log.read_all() == ents(1, 10)


def test_a_record_whose_crc_ends_in_zero_bytes_before_the_fill(tmp_path: Path) -> None:
    """The fill starts where the last record ends, even when that record ends in zero bytes."""
    batch = next(b for k in itertools.count() if (b := [Entry(1, 1, data=k.to_bytes(4, "big"))])
                 and frame_batch(b)[-1] == 0)
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        log.append(batch)
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        assert log.read_all() == batch
        log.append(ents(2, 2))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == batch + ents(2, 2)


# -- torn writes and corruption over the fill ------------------------------------------------------


def _log_with_a_last_record(tmp_path: Path, size: int) -> tuple[Path, bytes, int, int]:
    """A log of two batches over fill; returns the segment, its bytes, and where the last record lies."""
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        log.append(ents(1, 3))
        log.append(ents(4, 8, size=size))
    seg = tmp_path / segment_name(1)
    return seg, seg.read_bytes(), rec(3), rec(3) + rec(5, size)


@pytest.mark.parametrize("lost", ["first", "middle", "last", "all but the first", "every other"])
def test_a_record_with_sectors_that_never_left_the_fill_is_torn(tmp_path: Path, lost: str) -> None:
    """Power failed while the last record overwrote the fill: some of its sectors stayed zeros."""
    seg, full, start, end = _log_with_a_last_record(tmp_path, 700)
    sectors = list(range(start // SECTOR_BYTES, (end - 1) // SECTOR_BYTES + 1))
    assert len(sectors) >= 6
    gone = {"first": sectors[:1], "middle": sectors[3:4], "last": sectors[-1:],
            "all but the first": sectors[1:], "every other": sectors[::2]}[lost]
    data = bytearray(full)
    for s in gone:
        lo, hi = max(start, s * SECTOR_BYTES), min(end, (s + 1) * SECTOR_BYTES)
        data[lo:hi] = bytes(hi - lo)
    seg.write_bytes(bytes(data))
    with WriteAheadLog.open(tmp_path, fill_bytes=FILL) as log:
        assert log.read_all() == ents(1, 3)
        assert seg.stat().st_size == start  # cut, fill and all
        log.append(ents(4, 4, term=2))
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 3) + ents(4, 4, term=2)


def test_a_torn_record_followed_by_a_valid_one_is_corruption(tmp_path: Path) -> None:
    seg, full, start, end = _log_with_a_last_record(tmp_path, 700)
    data = bytearray(full)
    hole = (start // SECTOR_BYTES + 2) * SECTOR_BYTES
    data[hole:hole + SECTOR_BYTES] = bytes(SECTOR_BYTES)  # a sector of the middle batch "never written"
    data[end:end + rec(1)] = frame_batch(ents(9, 9))  # yet a later batch was
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="yet a valid record follows") as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.offset == start and info.value.path == str(seg)
    assert seg.read_bytes() == bytes(data)  # nothing was cut


@pytest.mark.parametrize("followed_by", ["fill", "a valid record"])
def test_a_flipped_bit_in_a_record_before_the_fill_is_corruption(tmp_path: Path, followed_by: str) -> None:
    seg, full, start, end = _log_with_a_last_record(tmp_path, 100)
    data = bytearray(full)
    data[start + 200] ^= 0x04  # in the payload: the record's bytes are all there, but wrong
    if followed_by == "a valid record":
        data[end:end + rec(1)] = frame_batch(ents(9, 9))
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="checksum mismatch") as info:
        WriteAheadLog.open(tmp_path)
    assert (info.value.path, info.value.offset) == (str(seg), start)


def test_damage_followed_only_by_zeros_is_cut(tmp_path: Path) -> None:
    """The rules of a growing file still hold over fill: bad bytes then zeros to the end are torn."""
    seg, full, start, end = _log_with_a_last_record(tmp_path, 100)
    for damage in ("length", "tail zeroed"):
        data = bytearray(full)
        if damage == "length":  # the last record claims to run into the fill: cannot be told from torn
            data[start + 5] ^= 0x01
        else:
            data[end - 30:end] = bytes(30)
        d = tmp_path / damage
        d.mkdir()
        (d / seg.name).write_bytes(bytes(data))
        with WriteAheadLog.open(d) as log:
            assert log.read_all() == ents(1, 3)
        assert (d / seg.name).stat().st_size == start


def test_an_earlier_segment_never_holds_fill(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_bytes=rec(3) + 20, fill_bytes=FILL) as log:
        log.append(ents(1, 3))
        assert (tmp_path / segment_name(1)).stat().st_size == rec(3) + 20
        log.append(ents(4, 6))  # rolls: the old tail's fill is cut first
        assert (tmp_path / segment_name(1)).stat().st_size == rec(3)
        assert (tmp_path / segment_name(4)).stat().st_size == rec(3) + 20
    # Zeros after the records of an earlier segment are no fill but damage: a roll never leaves them.
    with open(tmp_path / segment_name(1), "ab") as f:
        f.write(bytes(20))
    with pytest.raises(CorruptionError, match="no record marker") as info:
        WriteAheadLog.open(tmp_path)
    assert (info.value.path, info.value.offset) == (str(tmp_path / segment_name(1)), rec(3))


def test_roll_cuts_and_fsyncs_the_fill_before_creating_the_next_segment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path, segment_bytes=rec(3) + 20, fill_bytes=FILL)
    log.append(ents(1, 3))
    trace: list[str] = []
    for name in ("ftruncate", "fsync", "open", "pwritev"):
        real = getattr(os, name)

        def traced(*a: object, _real: Callable[..., object] = real, _name: str = name) -> object:
            if _name != "open" or a[1] & os.O_CREAT:  # type: ignore[operator]
                trace.append(_name)
            return _real(*a)

        monkeypatch.setattr(os, name, traced)
    log.append(ents(4, 6))
    monkeypatch.undo()
    # cut, fsync the cut, create the segment, fsync the directory, write, fsync
    assert trace == ["ftruncate", "fsync", "open", "fsync", "pwritev", "fsync"]
    log.close()


# -- crashes between the steps of every mutation --------------------------------------------------


class _Crash(BaseException):
    """The process dies: raised instead of a system call, so nothing after it happens."""


_STEPS = ("pwrite", "pwritev", "ftruncate", "fsync", "unlink", "open")


def _crash_at(monkeypatch: pytest.MonkeyPatch, k: int) -> dict[str, int]:
    """Let ``k`` steps (writes, cuts, fsyncs, deletions, creations) happen, then crash."""
    state = {"done": 0}
    for name in _STEPS:
        real = getattr(os, name)

        def step(*a: object, _real: Callable[..., object] = real, _name: str = name) -> object:
            if _name == "open" and not a[1] & os.O_CREAT:  # type: ignore[operator]
                return _real(*a)  # opening to read or append is no step
            if state["done"] == k:
                raise _Crash(_name)
            state["done"] += 1
            return _real(*a)

        monkeypatch.setattr(os, name, step)
    return state


def _every_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Callable[[WriteAheadLog], None],
                 action: Callable[[WriteAheadLog], None], segment_bytes: int) -> Iterator[tuple[Path, bool]]:
    """For each step of ``action``: a copy of the log as a crash there left it, and whether it finished."""
    src = tmp_path / "src"
    with WriteAheadLog.open(src, segment_bytes=segment_bytes, fill_bytes=64) as log:
        build(log)
    for k in itertools.count():
        d = tmp_path / f"crash{k}"
        shutil.copytree(src, d)
        log = WriteAheadLog.open(d, segment_bytes=segment_bytes, fill_bytes=64)
        _crash_at(monkeypatch, k)
        finished = True
        try:
            action(log)
        except _Crash:
            finished = False
        finally:
            monkeypatch.undo()
            log.close()
        yield d, finished
        if finished:
            return


def _check_reopens(d: Path, segment_bytes: int, allowed: list[tuple[int, list[Entry]]]) -> None:
    with WriteAheadLog.open(d, segment_bytes=segment_bytes, fill_bytes=64) as log:
        state = (log.first_index, log.read_all())
        assert state in allowed
        nxt = log.last_index + 1
        log.append(ents(nxt, nxt + 1, term=7))  # and it stays usable
    with WriteAheadLog.open(d, segment_bytes=segment_bytes) as log:
        assert (log.first_index, log.read_all()) == (state[0], state[1] + ents(nxt, nxt + 1, term=7))


SEG = 2 * rec(3) + 60  # two batches of three per segment


def _three_segments(log: WriteAheadLog) -> None:
    for i in range(1, 10, 3):
        log.append(ents(i, i + 2))


@pytest.mark.parametrize("mutation", ["append over fill", "extend fill", "roll", "truncate with a marker",
                                      "truncate at a record", "truncate across segments", "compact",
                                      "reset"])
def test_a_crash_between_any_two_steps_leaves_a_log_that_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutation: str) -> None:
    before = ents(1, 9)  # segments 1 (1..6) and 7 (7..9, then 64 bytes of fill)
    actions: dict[str, tuple[Callable[[WriteAheadLog], None], list[tuple[int, list[Entry]]]]] = {
        "append over fill": (lambda log: log.append(ents(10, 10)), [(1, before), (1, ents(1, 10))]),
        "extend fill": (lambda log: log.append(ents(10, 12)), [(1, before), (1, ents(1, 12))]),
        "roll": (lambda log: log.append(ents(10, 12, size=40)),
                 [(1, before), (1, before + ents(10, 12, size=40))]),
        "truncate with a marker": (lambda log: log.truncate(9), [(1, before), (1, ents(1, 8))]),
        "truncate at a record": (lambda log: log.truncate(7), [(1, before), (1, ents(1, 6))]),
        "truncate across segments": (lambda log: log.truncate(2), [(1, before), (1, ents(1, 6)), (1, ents(1, 1))]),
        "compact": (lambda log: log.compact(6), [(1, before), (7, ents(7, 9))]),
        # Reset deletes newest first: a prefix may be left, or nothing (an empty log from 1).
        "reset": (lambda log: log.reset(20), [(1, before), (1, ents(1, 6)), (1, []), (20, [])]),
    }
    action, allowed = actions[mutation]
    steps = 0
    for d, finished in _every_crash(tmp_path, monkeypatch, _three_segments, action, SEG):
        if mutation == "extend fill" and finished:
            assert (d / segment_name(7)).stat().st_size == SEG  # fill up to the segment size
        _check_reopens(d, SEG, allowed)
        steps += 1
    assert steps > 2


# -- full disks ----------------------------------------------------------------------------------


BIG = ents(3, 3, size=FILL_MAX_RECORD_BYTES)


def _full_disk_for_fill(monkeypatch: pytest.MonkeyPatch, record_fits: bool) -> list[int]:
    """pwritev fails with ENOSPC when it carries fill, or always; returns the sizes asked for.

    A write with fill gets its first part in, as a real disk filling up would.
    """
    asked: list[int] = []
    real = os.pwritev

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def pwritev(fd: int, parts: list[bytes], offset: int) -> int:
        n = sum(map(len, parts))
        asked.append(n)
        if record_fits and not is_zero(bytes(parts[-1])):
            return real(fd, parts, offset)
        done = real(fd, parts[:1], offset) if len(parts) > 2 else 0  # some of it fits, then no more
        if done:
            return done
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "pwrite", pwrite)
    return asked


def test_full_disk_for_the_fill_writes_the_record_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = tmp_path / segment_name(1)
    log = WriteAheadLog.open(tmp_path, fill_bytes=FILL)
    log.append(ents(1, 2))
    log.append(BIG)  # too big for fill, and past it: the next append must extend it
    asked = _full_disk_for_fill(monkeypatch, record_fits=True)
    log.append(ents(4, 6))
    monkeypatch.undo()
    assert asked == [rec(3) + FILL, rec(3)]  # record and fill, then the record alone
    end = rec(2) + rec(1, FILL_MAX_RECORD_BYTES) + rec(3)
    assert seg.stat().st_size == logical_size(seg) == end
    log.append(ents(7, 7))  # space came back: fill again
    assert seg.stat().st_size == end + rec(1) + FILL
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 2) + BIG + ents(4, 7)


def test_full_disk_while_extending_the_fill_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg = tmp_path / segment_name(1)
    log = WriteAheadLog.open(tmp_path, fill_bytes=FILL)
    log.append(ents(1, 2))
    log.append(BIG)
    end = rec(2) + rec(1, FILL_MAX_RECORD_BYTES)
    asked = _full_disk_for_fill(monkeypatch, record_fits=False)
    with pytest.raises(DiskFullError, match="No space left on device"):
        log.append(ents(4, 6))
    monkeypatch.undo()
    assert asked == [rec(3) + FILL, rec(3)]  # record and fill, then the record alone: neither fit
    assert log.last_index == 3 and seg.stat().st_size == end  # the half-written record went
    with WriteAheadLog.open(tmp_path) as other:  # what a crash now would find
        assert other.read_all() == ents(1, 2) + BIG
    log.append(ents(4, 5))  # space came back
    log.close()
    with WriteAheadLog.open(tmp_path) as log:
        assert log.read_all() == ents(1, 2) + BIG + ents(4, 5)


def test_failed_cut_after_a_full_disk_makes_the_log_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog.open(tmp_path, fill_bytes=FILL)
    log.append(ents(1, 2))
    log.append(BIG)
    _full_disk_for_fill(monkeypatch, record_fits=False)

    def no_cut(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", no_cut)
    with pytest.raises(DiskFullError):
        log.append(ents(4, 6))
    monkeypatch.undo()
    with pytest.raises(wal_module.StorageError, match="reopen"):
        log.append(ents(4, 4))
    log.close()
    with WriteAheadLog.open(tmp_path) as log:  # the half record is torn, and cut
        assert log.read_all() == ents(1, 2) + BIG


def test_sector_check_reads_each_share_of_a_record() -> None:
    data = bytes(1000)
    assert wal_module._has_unwritten_sector(data, 10, 20)
    data = b"x" * 512 + bytes(512) + b"x" * 512
    assert wal_module._has_unwritten_sector(data, 100, 1100)
    assert not wal_module._has_unwritten_sector(data, 100, 512)
    assert wal_module._has_unwritten_sector(data, 1000, 1030)  # its first share is zeros
    assert wal_module._content_end(b"a" + bytes(10_000_000)) == 1
    assert wal_module._content_end(bytes(70_000)) == 0
    assert wal_module._content_end(b"ab") == 2
