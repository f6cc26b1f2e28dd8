"""The follower's side of InstallSnapshot.

It accepts data only from the leader its core follows, writes it to a
temporary snapshot file, keeps that partial file across a dropped
connection (the leader resumes at the offset it is told), and commits it
once the SHA-256 matches.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.node.executor import Submit
from storg.node.raft_node import RaftNode
from storg.raft.types import ConfState, SnapshotMeta
from storg.server.client_port import RequestError
from storg.server.snapshots.data import (
    MAX_PART_BYTES,
    MAX_SNAPSHOT_BYTES,
    SnapshotWriteLock,
)
from storg.storage.logstore import DiskLogStore
from storg.storage.snapshot import SnapshotWriter
from storg.wire import ErrorCode
from storg.wire.snapshots import (
    SnapshotBegin,
    SnapshotEnd,
    SnapshotOffset,
    SnapshotPart,
    SnapshotStored,
)

log = Logger(namespace="storg.snapshots")

@dataclasses.dataclass(eq=False)
class _Partial:
    """A snapshot being received; kept across a dropped connection for a resume."""

    meta: SnapshotMeta
    size: int
    sha256: str
    writer: SnapshotWriter
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)
    offset: int = 0
    resumed_from: int = 0
    busy: bool = False
    owner: tuple[Any, int] | None = None

    @property
    def key(self) -> tuple[int, int, int, str]:
        return self.meta.index, self.meta.term, self.size, self.sha256

    def write(self, data: bytes) -> None:
        """Thread: append ``data``."""
        self.writer.write(data)
        self.hasher.update(data)


class SnapshotReceiver:
    """Client-port handlers that receive a snapshot from the leader into the snapshot store."""

    def __init__(self, node: RaftNode, log_store: DiskLogStore, executor: Submit, gate: SnapshotWriteLock, *,
                 max_part: int = MAX_PART_BYTES, max_size: int = MAX_SNAPSHOT_BYTES) -> None:
        self.node = node
        self.log_store = log_store
        self._executor = executor
        self._gate = gate
        self.max_part = max_part
        self.max_size = max_size
        self._partial: _Partial | None = None
        self._opening = False
        self._stopped = False
        self.stored: list[tuple[int, int]] = []
        """(index, offset the last connection resumed from) of each snapshot stored, for tests."""

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return {SnapshotBegin: self.begin, SnapshotPart: self.part, SnapshotEnd: self.end}

    # -- SnapshotBegin ----------------------------------------------------------------

    def begin(self, req: SnapshotBegin, conn: Any) -> Any:
        core = self.node.core
        if self._stopped:
            raise RequestError(ErrorCode.UNAVAILABLE, "node is stopping")
        if not req.leader or req.leader == self.node.node_id or req.leader != core.leader \
                or req.term != core.term:
            raise RequestError(ErrorCode.NOT_LEADER,
                               f"{req.leader or '?'} in term {req.term} is not the leader "
                               f"{self.node.node_id} follows (term {core.term}, leader {core.leader or 'unknown'})")
        if req.index == 0 or not 0 < req.snap_term <= req.term or not req.voters:
            raise RequestError(ErrorCode.BAD_REQUEST, f"not a snapshot: index {req.index} term {req.snap_term}")
        if req.size > self.max_size:
            raise RequestError(ErrorCode.BAD_REQUEST, f"a {req.size}-byte snapshot is over the limit")
        if req.index <= core.commit_index:
            # Everything the snapshot covers is already here: nothing to send.
            return SnapshotStored(req.request_id, req.index, req.snap_term)
        partial = self._partial
        if self._opening or (partial is not None and partial.busy):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot write is in progress; retry")
        meta = SnapshotMeta(req.index, req.snap_term, ConfState(frozenset(req.voters), frozenset(req.learners)))
        if partial is not None and partial.key == (req.index, req.snap_term, req.size, req.sha256):
            self._bind(partial, conn, req.request_id)
            partial.resumed_from = partial.offset
            log.info("{node}: resuming the snapshot at index {index} from {leader} at byte {offset}",
                     node=self.node.node_id, index=req.index, leader=req.leader, offset=partial.offset)
            return SnapshotOffset(req.request_id, partial.offset)
        if partial is not None:
            self._discard()
        self._opening = True
        d = self._executor(self.log_store.begin_snapshot, meta)

        def opened(writer: SnapshotWriter) -> SnapshotOffset:
            self._opening = False
            if self._stopped:
                writer.abort()
                raise RequestError(ErrorCode.UNAVAILABLE, "node is stopping")
            fresh = _Partial(meta, req.size, req.sha256, writer)
            self._partial = fresh
            self._bind(fresh, conn, req.request_id)
            log.info("{node}: receiving the snapshot at index {index} ({size} bytes) from {leader}",
                     node=self.node.node_id, index=req.index, size=req.size, leader=req.leader)
            return SnapshotOffset(req.request_id, 0)

        def failed(failure: Failure) -> Failure:
            self._opening = False
            return failure

        return d.addCallbacks(opened, failed)

    def _bind(self, partial: _Partial, conn: Any, request_id: int) -> None:
        partial.owner = (conn, request_id)
        conn.on_close(lambda: self._unbind(conn))

    def _unbind(self, conn: Any) -> None:
        partial = self._partial
        if partial is not None and partial.owner is not None and partial.owner[0] is conn:
            partial.owner = None  # the data stays for a resume

    def _owned(self, conn: Any, request_id: int) -> _Partial | None:
        partial = self._partial
        if partial is None or partial.owner is None:
            return None
        owner_conn, owner_id = partial.owner
        return partial if owner_conn is conn and owner_id == request_id else None

    def _refuse(self, conn: Any, request_id: int, code: ErrorCode, why: str) -> None:
        """A broken transfer: answer with the error and drop the connection (the partial data stays)."""
        log.warn("{node}: refusing snapshot frames: {why}", node=self.node.node_id, why=why)
        self._unbind(conn)
        conn.send_error(request_id, RequestError(code, why))
        conn.close_connection()

    def _discard(self) -> None:
        partial, self._partial = self._partial, None
        if partial is not None:
            self._executor(partial.writer.abort)

    # -- SnapshotPart -----------------------------------------------------------------

    def part(self, req: SnapshotPart, conn: Any) -> None:
        partial = self._owned(conn, req.request_id)
        if partial is None:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST, "no snapshot transfer of this request")
            return None
        size = len(req.data)
        if req.offset != partial.offset or partial.busy:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"part at offset {req.offset}, expected {partial.offset}")
            return None
        if size == 0 or size > self.max_part or req.offset + size > partial.size:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"part of {size} bytes at {req.offset} does not fit a {partial.size}-byte "
                         f"snapshot in parts of at most {self.max_part}")
            return None
        partial.busy = True
        conn.pause_reading()  # the next part waits for this write: memory stays bounded

        def written(_: Any) -> None:
            partial.busy = False
            partial.offset += size
            conn.resume_reading()

        def failed(failure: Failure) -> None:
            partial.busy = False
            if self._partial is partial:
                self._discard()
            conn.resume_reading()
            self._refuse(conn, req.request_id, ErrorCode.INTERNAL,
                         f"cannot write the snapshot: {failure.getErrorMessage()}")

        self._executor(partial.write, req.data).addCallbacks(written, failed)
        return None

    # -- SnapshotEnd ------------------------------------------------------------------

    def end(self, req: SnapshotEnd, conn: Any) -> Any:
        partial = self._owned(conn, req.request_id)
        if partial is None or partial.busy:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST, "no snapshot transfer of this request")
            return None
        if partial.offset != partial.size:
            self._refuse(conn, req.request_id, ErrorCode.BAD_REQUEST,
                         f"snapshot ended at byte {partial.offset} of {partial.size}")
            return None
        meta = partial.meta
        if partial.hasher.hexdigest() != partial.sha256:
            self._discard()
            raise RequestError(ErrorCode.INTEGRITY, f"snapshot at index {meta.index}: SHA-256 mismatch")
        if meta.index <= self.node.core.commit_index:
            # Caught up by the log meanwhile: this older state must not replace our snapshots.
            self._discard()
            return SnapshotStored(req.request_id, meta.index, meta.term)
        if not self._gate.acquire("receive"):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot is being written; retry")
        self._partial = None
        partial.busy = True
        d = self._executor(functools.partial(self.log_store.commit_snapshot, replace_newer=True),
                           partial.writer)

        def committed(_: Any) -> SnapshotStored:
            self.stored.append((meta.index, partial.resumed_from))
            log.info("{node} stored the snapshot at index {index} ({size} bytes) from the leader",
                     node=self.node.node_id, index=meta.index, size=partial.size)
            return SnapshotStored(req.request_id, meta.index, meta.term)

        def release(result: Any) -> Any:
            self._gate.release("receive")
            return result

        return d.addCallback(committed).addBoth(release)

    def stop(self) -> None:
        self._stopped = True
        if self._partial is not None and not self._partial.busy:
            self._discard()
