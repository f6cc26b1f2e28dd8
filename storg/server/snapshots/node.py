"""Snapshots on a running node: taken automatically, restored, and streamed to lagging followers.

Four pieces, tied to the node by :class:`NodeSnapshots`:

* :class:`AutoSnapshots` -- every ``snapshot_every`` applied entries the
  state machine is frozen on the reactor (shallow copies only), its frames
  are written to the snapshot store in a thread, and only once the file is
  durable is the log compacted (the core's, then the WAL's segments).
* :func:`~storg.server.snapshots.data.load_snapshot` / :meth:`NodeSnapshots.restore` -- read a snapshot
  back (decoding in a thread) and install it in the state machine: at
  start-up, and when the core adopts a snapshot sent by the leader.
* :class:`SnapshotSender` -- the leader's side of InstallSnapshot.  The
  core's SNAPSHOT message carries only the meta; the data goes first, in
  bounded frames over the follower's client port (``storg.wire.snapshots``),
  paced by TCP flow control, then the message goes over the peer transport.
* :class:`SnapshotReceiver` -- the follower's side: it accepts data only
  from the leader its core follows, writes it to a temporary snapshot file,
  keeps that partial file across a dropped connection (the leader resumes
  at the offset it is told), and commits it once the SHA-256 matches.

Each piece has a module of its own in this package: ``data`` (the format,
loading, the one-writer lock), ``auto``, ``sender``, ``receiver``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.snapshot import LoadedSnapshot
from storg.node.executor import PoolExecutor, Submit
from storg.node.raft_node import RaftNode
from storg.raft.types import Message, SnapshotMeta
from storg.server.snapshots.auto import AutoSnapshots
from storg.server.snapshots.data import SnapshotWriteLock, read_snapshot_file
from storg.server.snapshots.receiver import SnapshotReceiver
from storg.server.snapshots.sender import SnapshotSender
from storg.storage.logstore import DiskLogStore

log = Logger(namespace="storg.snapshots")

class NodeSnapshots:
    """Everything about snapshots on one node, attached to its RaftNode."""

    def __init__(self, node: RaftNode, fsm: FileStoreStateMachine, log_store: DiskLogStore, *,
                 every: int, reactor: Any, address_of: Callable[[str], str],
                 send_message: Callable[[Message], object], executor: Submit | None = None,
                 resume_grace: float | None = None, **sender_options: Any) -> None:
        self.node = node
        self.fsm = fsm
        self.log_store = log_store
        self.reactor = reactor
        self._pool: PoolExecutor | None = None
        if executor is None:
            executor = self._pool = PoolExecutor(reactor, f"storg-snapshots-{node.node_id}", 3)
        self._executor = executor
        gate = SnapshotWriteLock()
        self.auto = AutoSnapshots(node, fsm, log_store, every, executor, gate)
        self.sender = SnapshotSender(node, log_store, send_message, address_of, reactor, executor,
                                     **sender_options)
        receiver_options: dict[str, Any] = {} if resume_grace is None else {"resume_grace": resume_grace}
        self.receiver = SnapshotReceiver(node, log_store, executor, gate, reactor=reactor, **receiver_options)
        self.restored: list[tuple[int, float]] = []
        """(index, seconds) of each snapshot restored from the leader."""
        self.installed: list[Callable[[int], object]] = []
        """Called with the index after each snapshot from the leader is installed in the
        state machine: the node then fetches the chunk copies its new map says it holds."""
        node.on_snapshot(self.restore)
        node.on_snapshot_message(self.sender.send)
        node.set_snapshot_gate(self.receiver)
        node.on_applied(self.auto.applied)

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return self.receiver.handlers()

    def restore(self, meta: SnapshotMeta) -> defer.Deferred | None:
        """The core adopted ``meta`` (the node's on_snapshot handler): install its data.

        Index 0 is a joiner's membership, persisted by the log store, with
        no data.  Otherwise the data was stored by the receiver before the
        leader sent the message; it is decoded in a thread and installed on
        the reactor, before the node applies anything after it.
        """
        if meta.index == 0:
            return None
        self.receiver.installed(meta)  # persisted: the staged file is the current snapshot now
        started = time.monotonic()
        d = self._executor(read_snapshot_file, self.log_store, meta)

        def install(loaded: LoadedSnapshot | None) -> None:
            if loaded is not None:
                self.fsm.install(loaded)
            seconds = time.monotonic() - started
            self.restored.append((meta.index, seconds))
            log.info("{node} installed the leader's snapshot at index {index} in {seconds:.3f} s "
                     "({files} files)", node=self.node.node_id, index=meta.index, seconds=seconds,
                     files=self.fsm.stats()["files"])
            for listener in self.installed:
                try:
                    listener(meta.index)
                except Exception:  # a listener's bug must not fail the install
                    log.failure("snapshot install listener failed")

        return d.addCallback(install)

    @defer.inlineCallbacks
    def stop(self):
        self.sender.stop()
        self.receiver.stop()
        yield self.auto.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            yield pool.stop()
