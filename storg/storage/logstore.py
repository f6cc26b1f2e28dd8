"""The node's durable Raft state: the write-ahead log, hard state and snapshots together.

This is the ``LogStore`` that ``storg.node.raft_node.RaftNode`` persists each Ready
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

Snapshots are written by three parties: the node's automatic snapshots
(a thread of their own), a snapshot streamed in from the leader (the
receiver's thread) and the index-0 membership a joining node adopts (the
storage thread).  The snapshot store keeps only the latest file, so every
commit goes through :meth:`DiskLogStore.commit_snapshot` under one lock,
which also keeps an automatic snapshot from replacing a newer one that was
received meanwhile.

A snapshot received from the leader is only *staged*
(:meth:`DiskLogStore.stage_snapshot`): the bytes came over a client port,
which anyone can reach, so they replace nothing.  It becomes the current
snapshot in :meth:`DiskLogStore.persist`, when the core's Ready adopts that
very index and term, which it does only on the leader's SNAPSHOT message
(and the node lets that message through only when the staged data matches
it, :mod:`storg.server.snapshots.receiver`).  A staged snapshot left by a
stop is deleted when the store opens: the core never adopted it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from storg.raft.types import Entry, HardState, PersistedState, SnapshotMeta
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.hardstate import HardStateStore
from storg.storage.keys import Keyring
from storg.storage.snapshot import SnapshotReader, SnapshotStore, SnapshotWriter
from storg.storage.wal import DEFAULT_SEGMENT_BYTES, WriteAheadLog


class DiskLogStore:
    """Call ``load()`` once, then ``persist()``/``compact()`` from one thread at a time."""

    def __init__(self, data_dir: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 keyring: Keyring | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.segment_bytes = segment_bytes
        self.keyring = keyring
        """Encryption at rest: the log's records and the snapshots are sealed with it."""
        self.hard_states = HardStateStore(self.data_dir, keyring)
        self.snapshots = SnapshotStore(self.data_dir / "snap", keyring)
        self.wal: WriteAheadLog | None = None
        self._saved = HardState()
        self._latest = HardState()
        self._snapshot_lock = threading.Lock()
        self.on_append: Callable[[int, float], object] | None = None
        """Told ``(entries, seconds)`` after each durable batch append (write + fsync), in the
        storage thread: the metrics' WAL histograms, which are thread-safe, and nothing else."""
        self.log_bytes = 0
        """Bytes in the log's segments after the last load or append: one int, replaced whole,
        so the reactor may read it while the storage thread writes."""

    def load(self) -> PersistedState:
        """Recover: the latest snapshot, the hard state, and the log entries after the snapshot."""
        self.wal = WriteAheadLog.open(self.data_dir / "wal", self.segment_bytes, keyring=self.keyring)
        hard_state = self.hard_states.load() or HardState()
        self._saved = self._latest = hard_state
        snapshot = self.snapshots.latest() or SnapshotMeta()
        wal = self.wal
        if snapshot.index > 0 and not self._continues(snapshot):
            # The log does not continue the snapshot (a crash while
            # installing one): the snapshot is the truth, the log restarts after it.
            wal.reset(snapshot.index + 1)
        start = max(wal.first_index, snapshot.index + 1)
        if start > snapshot.index + 1:
            raise CorruptionError(wal.directory, None,
                                  f"the log starts at index {wal.first_index} but the snapshot "
                                  f"ends at {snapshot.index}: entries are missing")
        entries = wal.entries(start, wal.last_index + 1) if start <= wal.last_index else []
        self.log_bytes = wal.size_bytes()
        return PersistedState(hard_state, snapshot, entries)

    def entries_covered(self, snapshot_index: int) -> list[Entry]:
        """The entries at or below ``snapshot_index`` the log still holds (a restart replays none).

        After a compaction that happened these are at most the older part of
        one segment; after one that was refused (a small file not yet on
        disk) they are everything since the last good one.
        """
        wal = self._wal()
        hi = min(snapshot_index, wal.last_index)
        return wal.entries(wal.first_index, hi + 1) if wal.first_index <= hi else []

    def persist(self, snapshot: SnapshotMeta | None, entries: Sequence[Entry],
                hard_state: HardState | None) -> None:
        wal = self._wal()
        if snapshot is not None and snapshot.index == 0:
            self._persist_membership(snapshot)
        elif snapshot is not None:
            # The core adopted the snapshot the receiver staged: make it current;
            # the log must now continue from it.
            with self._snapshot_lock:
                current = self.snapshots.latest()
                if current is None or (current.index, current.term) != (snapshot.index, snapshot.term):
                    if not self.snapshots.staged(snapshot):
                        raise StorageError(
                            f"asked to install the snapshot at index {snapshot.index} term "
                            f"{snapshot.term}, but the snapshot store holds {current} and has "
                            f"nothing staged for it")
                    self.snapshots.promote(snapshot)
            if not self._continues(snapshot):
                wal.reset(snapshot.index + 1)
        if entries:
            started = time.monotonic()
            wal.append(entries)
            seconds = time.monotonic() - started
            self.log_bytes = wal.size_bytes()
            if self.on_append is not None:
                self.on_append(len(entries), seconds)
        if hard_state is not None:
            self._latest = hard_state
            if (hard_state.term, hard_state.vote) != (self._saved.term, self._saved.vote):
                self.hard_states.save(hard_state)
                self._saved = hard_state

    def compact(self, index: int) -> None:
        wal = self._wal()
        wal.compact(index)
        self.log_bytes = wal.size_bytes()

    def _continues(self, snapshot: SnapshotMeta) -> bool:
        """Whether the log goes on from ``snapshot``: it holds the snapshot's last entry
        (same term), or it starts right after it (a log reset when the snapshot was installed)."""
        wal = self._wal()
        if wal.first_index == snapshot.index + 1:
            return True
        return (wal.first_index <= snapshot.index <= wal.last_index
                and wal.term_at(snapshot.index) == snapshot.term)

    # -- snapshots (any thread; commits are serialized) ----------------------

    def begin_snapshot(self, meta: SnapshotMeta) -> SnapshotWriter:
        """A writer for a new snapshot; finish it with :meth:`commit_snapshot`."""
        return self.snapshots.begin(meta)

    def commit_snapshot(self, writer: SnapshotWriter) -> bool:
        """Make this node's own (automatic) snapshot the current one; False (and aborted) if refused.

        It is refused when the current one is at or past its index (one
        received from the leader overtook it).
        """
        with self._snapshot_lock:
            current = self.snapshots.latest()
            if current is not None and current.index >= writer.meta.index:
                writer.abort()
                return False
            writer.commit()
            return True

    def stage_snapshot(self, writer: SnapshotWriter) -> SnapshotMeta:
        """Keep a snapshot received from the leader, durable but not current (see the module doc)."""
        with self._snapshot_lock:
            writer.stage()
            return writer.meta

    def latest_snapshot(self) -> SnapshotMeta | None:
        with self._snapshot_lock:
            return self.snapshots.latest()

    def open_snapshot(self) -> SnapshotReader | None:
        """A reader over the current snapshot (None if there is none); the caller closes it."""
        with self._snapshot_lock:
            return self.snapshots.open_latest()

    def _persist_membership(self, snapshot: SnapshotMeta) -> None:
        """A joiner's index-0 membership: a snapshot without data, so it survives a restart."""
        with self._snapshot_lock:
            if self.snapshots.latest() is None:
                self.snapshots.begin(snapshot).commit()

    def reseal(self) -> int:
        """The re-encryption pass over the log and the snapshot: records resealed under the active key.

        Runs on the storage thread (it rewrites log segments).  The hard
        state and identity are authenticated with the cluster secret, which
        no rotation changes, so they need nothing.
        """
        with self._snapshot_lock:
            done = int(self.snapshots.reseal_latest())
        return done + self._wal().reseal()

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
