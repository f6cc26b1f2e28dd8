"""Automatic snapshots: every ``snapshot_every`` applied entries, freeze, write, then compact.

The state machine is frozen on the reactor (shallow copies only), its
frames are written to the snapshot store in a thread, and only once the
file is durable is the log compacted (the core's, then the WAL's segments).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.fsm.machine import FileStoreStateMachine
from storg.node.executor import Submit
from storg.node.raft_node import NodeStopped, RaftNode
from storg.raft.types import SnapshotMeta
from storg.server.snapshots.data import Cancelled, SnapshotWriteLock, write_frames
from storg.storage.logstore import DiskLogStore

log = Logger(namespace="storg.snapshots")


def _call(_result: object, hook: Callable[[], defer.Deferred]) -> defer.Deferred:
    """A callback that runs ``hook`` (its Deferred is waited for) in place of the result."""
    return hook()


class AutoSnapshots:
    """Takes a snapshot every ``every`` applied entries and compacts the log behind it."""

    def __init__(self, node: RaftNode, fsm: FileStoreStateMachine, log_store: DiskLogStore,
                 every: int, executor: Submit, gate: SnapshotWriteLock) -> None:
        if every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.node = node
        self.fsm = fsm
        self.log_store = log_store
        self.every = every
        self._executor = executor
        self._gate = gate
        self._last = node.core.snapshot_meta.index
        self._running: defer.Deferred | None = None
        self._stopping = False
        self.taken: list[tuple[int, int, float]] = []
        """(index, bytes, seconds) of each snapshot written, for tests and benchmarks."""
        self.before_compact: list[Callable[[], defer.Deferred]] = []
        """Run (in order) after a snapshot is durable and before the log is compacted
        behind it: whatever the log alone made durable must become durable elsewhere
        first (the small files written on apply without an fsync)."""

    def applied(self, index: int) -> None:
        """The node's on_applied watcher."""
        if self._running is not None or self._stopping:
            return
        base = max(self._last, self.node.core.snapshot_meta.index)
        if index - base >= self.every:
            self.take()

    def take(self) -> defer.Deferred:
        """Snapshot now, at the applied index; fires with its meta (None if skipped)."""
        if self._running is not None or not self._gate.acquire("auto"):
            return defer.succeed(None)
        index = self.node.applied_index
        meta = self.node.snapshot_meta_at(index)
        frozen = self.fsm.freeze()  # on the reactor, between two applies: exactly state `index`
        started = time.monotonic()
        d = self._executor(self._write, meta, frozen.frames())
        self._running = d  # before the callbacks: with an inline executor they run at once
        d.addCallback(self._written, meta, started)
        d.addErrback(self._failed, meta)
        d.addBoth(self._done)
        return d

    def _write(self, meta: SnapshotMeta, frames: Iterable[bytes]) -> int | None:
        """Thread: write and commit; the data's size, or None if a newer snapshot exists."""
        writer = self.log_store.begin_snapshot(meta)
        try:
            size = write_frames(writer, frames, lambda: self._stopping)
        except BaseException:
            writer.abort()
            raise
        return size if self.log_store.commit_snapshot(writer) else None

    def _written(self, size: int | None, meta: SnapshotMeta, started: float) -> Any:
        seconds = time.monotonic() - started
        self._last = max(self._last, meta.index)
        if size is None:
            log.info("{node}: snapshot at index {index} dropped: a newer one is already stored",
                     node=self.node.node_id, index=meta.index)
            return None
        self.taken.append((meta.index, size, seconds))
        log.info("{node} wrote a snapshot at index {index}: {size} bytes in {seconds:.3f} s",
                 node=self.node.node_id, index=meta.index, size=size, seconds=seconds)
        d = defer.succeed(None)
        for hook in self.before_compact:
            d.addCallback(_call, hook)
        d.addCallback(lambda _: self.node.compact(meta.index))
        return d.addCallback(lambda _: meta)

    def _failed(self, failure: Failure, meta: SnapshotMeta) -> None:
        if failure.check(Cancelled, NodeStopped):
            return None
        log.failure("{node}: snapshot at index {index} failed", failure,
                    node=self.node.node_id, index=meta.index)
        return None

    def _done(self, result: Any) -> Any:
        self._running = None
        self._gate.release("auto")
        return result

    def stop(self) -> defer.Deferred:
        """Abandon a snapshot being written; fires once its thread let go."""
        self._stopping = True
        running = self._running
        if running is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()

        def let_go(result: object) -> object:
            done.callback(None)
            return result

        running.addBoth(let_go)
        return done
