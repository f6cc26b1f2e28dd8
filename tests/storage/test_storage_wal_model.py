"""Property test: the log behaves like a list under appends, overwrites, truncations
(at and inside batch records), compaction, resets, restarts and torn appends."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from storg.raft.types import Entry, EntryType
from storg.storage.wal import WriteAheadLog, frame_batch

SEGMENT_BYTES = 180  # a handful of records per segment, so batches roll and span segments


class LogModel(RuleBasedStateMachine):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.dir = directory
        self.log = WriteAheadLog.open(self.dir, segment_bytes=SEGMENT_BYTES)
        self.first = 1
        self.model: list[Entry] = []  # model[k] has index first + k

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

    @rule(count=st.integers(1, 5), size=st.sampled_from([0, 3, 300]), keep=st.floats(0, 1, exclude_max=True))
    def crash_mid_append(self, count: int, size: int, keep: float) -> None:
        """The process dies while a batch is being written: a prefix of its record is on disk."""
        start = self.last + 1
        record = frame_batch([Entry(9, start + k, EntryType.NORMAL, b"t" * size) for k in range(count)])
        self.log.close()
        tail = max(p for p in self.dir.iterdir() if p.suffix == ".wal")
        with tail.open("ab") as f:
            f.write(record[:int(len(record) * keep)])
        self.log = WriteAheadLog.open(self.dir, segment_bytes=SEGMENT_BYTES)

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
        self.log = WriteAheadLog.open(self.dir, segment_bytes=SEGMENT_BYTES)

    @invariant()
    def matches_model(self) -> None:
        assert (self.log.first_index, self.log.last_index) == (self.first, self.last)
        assert self.log.read_all() == self.model
        assert [self.log.term_at(e.index) for e in self.model] == [e.term for e in self.model]

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_log_matches_a_list_model(tmp_path: Path) -> None:
    runs = itertools.count()
    run_state_machine_as_test(
        lambda: LogModel(tmp_path / f"run{next(runs)}"),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )
