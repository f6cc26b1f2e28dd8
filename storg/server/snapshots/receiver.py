"""The follower's side of InstallSnapshot.

It accepts data only from the leader its core follows, writes it to a
temporary snapshot file, keeps that partial file across a dropped
connection for ``resume_grace`` seconds (the leader retries within a
second and resumes at the offset it is told), and stages it once the
SHA-256 matches.

Why a partial file is deleted after a disconnect
------------------------------------------------
The leader's id and term a ``SnapshotBegin`` must name are public, so
anyone can start an upload of up to ``MAX_SNAPSHOT_BYTES``.  Kept until
the next snapshot, a forged upload's bytes would sit on the disk
indefinitely; so a partial file whose connection closed is deleted unless
a connection resumes it within ``resume_grace`` seconds
(``limits.snapshot_resume_grace_s``, 10 s by default).  That keeps the
resume of a real leader whose link flapped (it retries after a second),
and bounds what a stranger leaves behind to one partial file for seconds.

Why staged, not committed
-------------------------
The data arrives on the client port, which anyone who can reach the node
can talk to, and the leader's id and term it must name are public
(``StatusReply``).  A forged ``SnapshotBegin/Part/End`` must therefore
change nothing the node relies on.  So:

1. ``SnapshotBegin`` is accepted only naming the leader the core follows,
   in the core's term; ``SnapshotEnd`` checks it again (the leader may have
   changed while the data streamed in).
2. The verified data is *staged* (:meth:`DiskLogStore.stage_snapshot`):
   durable, but not the current snapshot; it replaces nothing, and it is
   deleted if the node restarts before adopting it.
3. It becomes the current snapshot only when the core adopts it, which the
   core does only on a SNAPSHOT message from the peer transport.  The node
   asks :meth:`SnapshotReceiver.admit` before stepping such a message: it
   passes only if the staged data was announced by the message's sender in
   the message's term, for the very same meta (index, term, membership),
   and, when the message carries one (every storg leader with this receiver puts
   it in ``context``), with the same SHA-256.  Anything else is dropped: a
   SNAPSHOT message whose data is not here can no longer make ``persist``
   fail and stop the node.
4. From the moment a message is admitted until the core's Ready is
   persisted (the staged file promoted, :meth:`installed`), the staged file
   is *claimed*: no Begin or End may replace it.

What a forged client-port sequence can still do is replace a staged
snapshot that no message has claimed yet, so that the leader's message
finds nothing matching and is dropped; the leader sends the snapshot
again.  That is a delay, never a wrong state.  Closing it too needs the
client port authenticated (TLS).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.config import LimitTuning
from storg.node.executor import Submit
from storg.node.raft_node import RaftNode
from storg.raft.types import ConfState, Message, SnapshotMeta
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
    leader: str
    term: int
    hasher: Any = dataclasses.field(default_factory=hashlib.sha256)
    offset: int = 0
    resumed_from: int = 0
    busy: bool = False
    owner: tuple[Any, int] | None = None
    expiry: Any = None  # the DelayedCall deleting it if no connection resumes it
    expired: bool = False  # the grace ran out during a write: deleted once the write is done

    @property
    def key(self) -> tuple[int, int, int, str]:
        return self.meta.index, self.meta.term, self.size, self.sha256

    def write(self, data: bytes) -> None:
        """Thread: append ``data``."""
        self.writer.write(data)
        self.hasher.update(data)


@dataclasses.dataclass(frozen=True)
class _Staged:
    """A verified snapshot waiting for the core's SNAPSHOT message."""

    meta: SnapshotMeta
    size: int
    sha256: str
    leader: str
    term: int

    @property
    def key(self) -> tuple[int, int, int, str]:
        return self.meta.index, self.meta.term, self.size, self.sha256


class SnapshotReceiver:
    """Client-port handlers that receive a snapshot from the leader into the snapshot store."""

    def __init__(self, node: RaftNode, log_store: DiskLogStore, executor: Submit, gate: SnapshotWriteLock, *,
                 max_part: int = MAX_PART_BYTES, max_size: int = MAX_SNAPSHOT_BYTES,
                 reactor: Any = None, resume_grace: float = LimitTuning().snapshot_resume_grace_s) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor = reactor
        self.resume_grace = resume_grace
        self.node = node
        self.log_store = log_store
        self._executor = executor
        self._gate = gate
        self.max_part = max_part
        self.max_size = max_size
        self._partial: _Partial | None = None
        self._staged: _Staged | None = None
        self._staging = False
        self._claimed = False
        self._opening = False
        self._stopped = False
        self.stored: list[tuple[int, int]] = []
        """(index, offset the last connection resumed from) of each snapshot stored, for tests."""
        self.stored_bytes = 0
        """Bytes of the snapshots staged from leaders (``storg_raft_snapshot_received_bytes_total``)."""

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
        staged = self._staged
        if staged is not None and staged.key == (req.index, req.snap_term, req.size, req.sha256) \
                and (staged.leader, staged.term) == (req.leader, req.term):
            return SnapshotStored(req.request_id, req.index, req.snap_term)  # already here, waiting
        if self._claimed or self._staging:
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot is being installed; retry")
        partial = self._partial
        if self._opening or (partial is not None and partial.busy):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot write is in progress; retry")
        meta = SnapshotMeta(req.index, req.snap_term, ConfState(frozenset(req.voters), frozenset(req.learners)))
        if partial is not None and partial.key == (req.index, req.snap_term, req.size, req.sha256) \
                and (partial.leader, partial.term) == (req.leader, req.term):
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
            fresh = _Partial(meta, req.size, req.sha256, writer, req.leader, req.term)
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
        partial.expired = False
        self._cancel_expiry(partial)
        conn.on_close(lambda: self._unbind(conn))

    def _unbind(self, conn: Any) -> None:
        partial = self._partial
        if partial is not None and partial.owner is not None and partial.owner[0] is conn:
            partial.owner = None  # the data stays for a resume, for a while
            self._cancel_expiry(partial)
            partial.expiry = self.reactor.callLater(self.resume_grace, self._expire, partial)

    @staticmethod
    def _cancel_expiry(partial: _Partial) -> None:
        if partial.expiry is not None and partial.expiry.active():
            partial.expiry.cancel()
        partial.expiry = None

    def _expire(self, partial: _Partial) -> None:
        """No connection resumed ``partial`` within the grace: delete its file."""
        partial.expiry = None
        if self._partial is not partial or partial.owner is not None:
            return
        if partial.busy:
            partial.expired = True  # a write is running in a thread: delete after it
            return
        log.info("{node}: deleting the partial snapshot at index {index} from {leader} "
                 "({offset} of {size} bytes): its connection closed {grace:g} s ago",
                 node=self.node.node_id, index=partial.meta.index, leader=partial.leader,
                 offset=partial.offset, size=partial.size, grace=self.resume_grace)
        self._discard()

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
            self._cancel_expiry(partial)
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
            if partial.expired:
                self._expire(partial)

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
        core = self.node.core
        if (partial.leader, partial.term) != (core.leader, core.term):
            # The leadership changed while the data streamed in: not from the leader followed now.
            self._discard()
            raise RequestError(ErrorCode.NOT_LEADER,
                               f"{partial.leader} in term {partial.term} is no longer the leader "
                               f"{self.node.node_id} follows")
        if partial.hasher.hexdigest() != partial.sha256:
            self._discard()
            raise RequestError(ErrorCode.INTEGRITY, f"snapshot at index {meta.index}: SHA-256 mismatch")
        if meta.index <= core.commit_index:
            # Caught up by the log meanwhile: this older state must not replace our snapshots.
            self._discard()
            return SnapshotStored(req.request_id, meta.index, meta.term)
        if self._claimed or self._staging:
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot is being installed; retry")
        if not self._gate.acquire("receive"):
            raise RequestError(ErrorCode.UNAVAILABLE, "a snapshot is being written; retry")
        self._partial = None
        self._cancel_expiry(partial)
        partial.busy = True
        self._staging = True
        self._staged = None  # replaced by this one (or by nothing, if staging fails)
        d = self._executor(self.log_store.stage_snapshot, partial.writer)

        def staged(_: Any) -> SnapshotStored:
            self._staged = _Staged(meta, partial.size, partial.sha256, partial.leader, partial.term)
            self.stored.append((meta.index, partial.resumed_from))
            self.stored_bytes += partial.size
            log.info("{node} staged the snapshot at index {index} ({size} bytes) from {leader}; "
                     "it is installed when the leader's message names it",
                     node=self.node.node_id, index=meta.index, size=partial.size, leader=partial.leader)
            return SnapshotStored(req.request_id, meta.index, meta.term)

        def release(result: Any) -> Any:
            self._staging = False
            self._gate.release("receive")
            return result

        return d.addCallback(staged).addBoth(release)

    # -- the core's SNAPSHOT message ----------------------------------------------------

    def admit(self, msg: Message) -> bool:
        """May the core adopt the snapshot ``msg`` names?  Only with its data staged here.

        True claims the staged file until :meth:`settled` or :meth:`installed`.
        """
        staged, snap = self._staged, msg.snapshot
        why = ""
        if snap is None:
            why = "it names no snapshot"
        elif self._staging:
            why = "a snapshot is being staged"
        elif staged is None:
            why = "no snapshot data was received for it"
        elif staged.meta != snap:
            why = f"the data received is for index {staged.meta.index} term {staged.meta.term}"
        elif (staged.leader, staged.term) != (msg.frm, msg.term):
            why = f"the data received came from {staged.leader} in term {staged.term}"
        elif msg.context and msg.context != bytes.fromhex(staged.sha256):
            why = "the data received has another SHA-256"
        if why:
            log.warn("{node}: dropping the SNAPSHOT message from {frm} (term {term}, index {index}): "
                     "{why}", node=self.node.node_id, frm=msg.frm, term=msg.term,
                     index=snap.index if snap is not None else "?", why=why)
            return False
        self._claimed = True
        return True

    def settled(self, msg: Message, adopted: bool) -> None:
        """The core handled an admitted message; if it did not adopt the snapshot, unclaim it."""
        if not adopted:
            self._claimed = False

    def installed(self, meta: SnapshotMeta) -> None:
        """The core's Ready with ``meta`` is persisted: the staged file is now the current snapshot."""
        if self._staged is not None and self._staged.meta == meta:
            self._staged = None
        self._claimed = False

    def stop(self) -> None:
        self._stopped = True
        if self._partial is not None and not self._partial.busy:
            self._discard()
