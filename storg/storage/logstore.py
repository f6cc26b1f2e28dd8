"""The node's durable Raft state: the write-ahead log, hard state and snapshots together.

This is the ``LogStore`` that ``storg.node.RaftNode`` persists each Ready
into, from its storage thread.  Layout under the data_dir::

    wal/        segment files (storg.storage.wal)
    hardstate   term, vote, commit (storg.storage.hardstate)
    snap/       snapshots (storg.storage.snapshot)

Fsync economy: entries cost one write and one fsync per Ready (group
commit).  The hard state is replaced (write, fsync, rename, fsync) only when
the term or the vote changes, which is what Raft's safety needs on disk; a
change of the commit index alone is kept in memory and written with the next
term or vote change and on close.  A node that restarts with an older commit
index simply learns the commit index again from the leader, and the state
machine is rebuilt from the snapshot and the log either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from storg.raft.types import Entry, HardState, PersistedState, SnapshotMeta
from storg.storage.errors import CorruptionError
from storg.storage.hardstate import HardStateStore
from storg.storage.snapshot import SnapshotStore
from storg.storage.wal import WriteAheadLog


class DiskLogStore:
    """Call ``load()`` once, then ``persist()``/``compact()`` from one thread at a time."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.hard_states = HardStateStore(self.data_dir)
        self.snapshots = SnapshotStore(self.data_dir / "snap")
        self.wal: WriteAheadLog | None = None
        self._saved = HardState()
        self._latest = HardState()

    def load(self) -> PersistedState:
        """Recover: the latest snapshot, the hard state, and the log entries after the snapshot."""
        self.wal = WriteAheadLog.open(self.data_dir / "wal")
        hard_state = self.hard_states.load() or HardState()
        self._saved = self._latest = hard_state
        snapshot = self.snapshots.latest() or SnapshotMeta()
        wal = self.wal
        if snapshot.index > 0:
            covered = wal.first_index <= snapshot.index <= wal.last_index
            if not covered or wal.term_at(snapshot.index) != snapshot.term:
                # The log does not continue the snapshot (a crash while
                # installing one): the snapshot is the truth, the log restarts after it.
                if wal.last_index >= wal.first_index or wal.first_index != snapshot.index + 1:
                    wal.reset(snapshot.index + 1)
        start = max(wal.first_index, snapshot.index + 1)
        if start > snapshot.index + 1:
            raise CorruptionError(wal.directory, None,
                                  f"the log starts at index {wal.first_index} but the snapshot "
                                  f"ends at {snapshot.index}: entries are missing")
        entries = wal.entries(start, wal.last_index + 1) if start <= wal.last_index else []
        return PersistedState(hard_state, snapshot, entries)

    def persist(self, snapshot: SnapshotMeta | None, entries: Sequence[Entry],
                hard_state: HardState | None) -> None:
        wal = self._wal()
        if snapshot is not None:
            # The snapshot's data was written to self.snapshots by whoever
            # received it; the log must now continue from it.
            if not (wal.first_index <= snapshot.index <= wal.last_index
                    and wal.term_at(snapshot.index) == snapshot.term):
                wal.reset(snapshot.index + 1)
        if entries:
            wal.append(entries)
        if hard_state is not None:
            self._latest = hard_state
            if (hard_state.term, hard_state.vote) != (self._saved.term, self._saved.vote):
                self.hard_states.save(hard_state)
                self._saved = hard_state

    def compact(self, index: int) -> None:
        self._wal().compact(index)

    def close(self) -> None:
        """Write the latest commit index too, then close the log."""
        if self.wal is None:
            return
        if self._latest != self._saved:
            self.hard_states.save(self._latest)
            self._saved = self._latest
        self.wal.close()
        self.wal = None

    def _wal(self) -> WriteAheadLog:
        if self.wal is None:
            raise RuntimeError("DiskLogStore.load() must be called first")
        return self.wal
