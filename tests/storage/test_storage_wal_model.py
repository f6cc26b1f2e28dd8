"""Property test: the log behaves like a list under appends, overwrites, truncations
(at and inside batch records), compaction, resets, restarts and torn appends (a
prefix of the record, or any of its sectors, reached the disk over the zero fill)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import storg.storage.wal as wal_module
from storg.raft.types import Entry, EntryType
from storg.storage.wal import WriteAheadLog, frame_batch

from tests.storage.wal_files import logical_size

SEGMENT_BYTES = 180  # a handful of records per segment, so batches roll and span segments
FILL_BYTES = 48  # less than most records: the fill is extended, overwritten and cut all the time
SECTOR_BYTES = 16  # torn-write granularity in this test, so that small records tear into pieces


class LogModel(RuleBasedStateMachine):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.dir = directory
        self.log = self._open()
        self.first = 1
        self.model: list[Entry] = []  # model[k] has index first + k

    def _open(self) -> WriteAheadLog:
        return WriteAheadLog.open(self.dir, segment_bytes=SEGMENT_BYTES, fill_bytes=FILL_BYTES)

    @property
    def last(self) -> int:
        return self.first + len(self.model) - 1

    @rule(back=st.integers(0, 12), count=st.integers(1, 9), term=st.integers(1, 5),
          size=st.sampled_from([0, 3, 40, 300]), conf=st.booleans())
    def append(self, back: int, count: int, term: int, size: int, conf: bool) -> None:
        start = max(self.first, self.last + 1 - back)
        kind = EntryType.CONF_CHANGE if conf else EntryType.NORMAL
        batch = [Entry(term, start + k, kind, bytes([(start + k) % 256]) * size) for k in range(count)]
        self.log.append(batch)
        del self.model[start - self.first:]
        self.model.extend(batch)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        cut = data.draw(st.integers(self.first, self.last + 1))
        self.log.truncate(cut)
        del self.model[cut - self.first:]

    @rule(count=st.integers(1, 5), size=st.sampled_from([0, 3, 300]), keep=st.floats(0, 1, exclude_max=True),
          sectors=st.none() | st.lists(st.booleans(), min_size=1, max_size=40))
    def crash_mid_append(self, count: int, size: int, keep: float, sectors: list[bool] | None) -> None:
        """Power fails while a batch is written at the end of the log, over its fill (if any).

        Either a prefix of the record reached the disk, or (``sectors``)
        any of its sectors did and the others kept their zeros.  Unless
        every byte made it, the batch was never acknowledged and is cut.
        """
        start = self.last + 1
        batch = [Entry(9, start + k, EntryType.NORMAL, b"t" * size) for k in range(count)]
        record = frame_batch(batch)
        self.log.close()
        tail = max(p for p in self.dir.iterdir() if p.suffix == ".wal")
        base = logical_size(tail)
        if sectors is None:
            on_disk = bytearray(record[:int(len(record) * keep)])
        else:
            on_disk = bytearray(record)
            a, end = base, base + len(record)
            for kept in itertools.cycle(sectors):
                b = min((a // SECTOR_BYTES + 1) * SECTOR_BYTES, end)
                if not kept:
                    on_disk[a - base:b - base] = bytes(b - a)
                a = b
                if a == end:
                    break
        with tail.open("r+b") as f:
            f.seek(base)
            f.write(on_disk)
            f.seek(base)
            now = f.read(len(record))
        self.log = self._open()
        # Every byte of the record is on the disk: it was written, or the
        # lost ones held zeros anyway (a lost sector of zeros, or a CRC that
        # ends in a zero byte over the fill).  The record is then whole and
        # the log may keep it: it was never acknowledged, but it is intact.
        if now == record:
            del self.model[start - self.first:]
            self.model.extend(batch)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(self.first - 1, self.last + 2))
        old_first = self.log.first_index
        self.log.compact(upto)
        new_first = self.log.first_index
        assert old_first <= new_first <= max(old_first, upto + 1)
        del self.model[:new_first - self.first]
        self.first = new_first

    @rule(gap=st.integers(0, 20))
    def reset(self, gap: int) -> None:
        nxt = self.last + 1 + gap
        self.log.reset(nxt)
        self.first, self.model = nxt, []

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = self._open()

    @invariant()
    def matches_model(self) -> None:
        assert (self.log.first_index, self.log.last_index) == (self.first, self.last)
        assert self.log.read_all() == self.model
        assert [self.log.term_at(e.index) for e in self.model] == [e.term for e in self.model]

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_log_matches_a_list_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal_module, "SECTOR_BYTES", SECTOR_BYTES)
    runs = itertools.count()
    run_state_machine_as_test(
        lambda: LogModel(tmp_path / f"run{next(runs)}"),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


def test_a_torn_record_whose_lost_bytes_were_zeros_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case the model once got wrong: a record whose CRC ends in a zero byte, all but
    that byte written over the fill.  Every byte of it is on the disk, so the log keeps it."""
    monkeypatch.setattr(wal_module, "SECTOR_BYTES", SECTOR_BYTES)
    model = LogModel(tmp_path / "run")
    try:
        model.append(back=0, count=1, term=1, size=0, conf=False)
        record = frame_batch([Entry(9, 2, EntryType.NORMAL, b"")])
        assert record[-1] == 0  # the premise: its last byte is a zero, as the fill's are
        model.crash_mid_append(count=1, size=0, keep=(len(record) - 1) / len(record), sectors=None)
        assert model.log.last_index == 2
        model.matches_model()
    finally:
        model.teardown()
