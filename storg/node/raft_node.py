"""The Deferred-driven consensus module: a pure Raft core driven by the reactor.

:class:`RaftNode` owns one :class:`~storg.raft.core.RaftCore` and does the
I/O the core refuses to do.  It feeds the core ticks from reactor time and
messages from the peer transport, and handles each ``Ready`` in the order the
core's contract demands:

1. persist (snapshot, entries, hard state) in a storage thread, durably;
2. send the messages, which may depend on what was just persisted;
3. apply committed entries to the state machine and fire the Deferreds of the
   proposals and reads waiting on them;
4. ``advance()``.

A Ready that carries a snapshot from the leader first restores the state
machine (the ``on_snapshot`` handler, which may take a thread); SNAPSHOT
messages go to the ``on_snapshot_message`` sender, which streams the data
before the message.  A SNAPSHOT message received that the core would adopt
is first shown to the ``snapshot_gate`` (the receiver): without the data
for it at hand the message is dropped, so the core never adopts a snapshot
that ``persist`` cannot install (which would stop the node).

Only one Ready is in flight at a time.  While its fsync runs, ticks and peer
messages keep flowing into the core (so a follower's election timer is never
starved by a slow disk) and proposals keep queueing; the next Ready then
carries all of them in one write and one fsync, which is the group commit.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg import tracing
from storg.node.executor import SerialExecutor, Submit
from storg.raft.core import RaftCore
from storg.raft.errors import NotLeader, ProposalDropped
from storg.raft.types import (
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)
from storg.storage.errors import DiskFullError

log = Logger(namespace="storg.node")

_T = TypeVar("_T")


class Timeout(Exception):
    """No answer in time.  For a proposal the outcome is unknown: it may still commit."""


class NodeStopped(Exception):
    """The node stopped before the operation finished."""


class LogFull(NodeStopped):
    """This node's Raft log cannot be written (disk full): it can confirm no read now.

    A NodeStopped, so the client port answers UNAVAILABLE and the client
    tries another node at once instead of waiting out its timeout here.
    """


class LogStore(Protocol):
    """The durable half of Raft state, as the node needs it.

    ``persist`` blocks until everything is durable; the node calls it from a
    storage thread, one call at a time, never concurrently.
    """

    def load(self) -> PersistedState: ...

    def persist(self, snapshot: SnapshotMeta | None, entries: Sequence[Entry],
                hard_state: HardState | None) -> None: ...

    def compact(self, index: int) -> None: ...


class SnapshotGate(Protocol):
    """Decides whether the core may adopt the snapshot a SNAPSHOT message names."""

    def admit(self, msg: Message) -> bool: ...

    def settled(self, msg: Message, adopted: bool) -> None: ...


class StateMachine(Protocol):
    """What committed entries are applied to.  ``apply`` must be deterministic."""

    def apply(self, entry: Entry) -> Any: ...


"""Runs a blocking callable with arguments and returns a Deferred of its result."""


def run_inline(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """An executor for tests with in-memory storage: no thread at all."""
    return defer.maybeDeferred(fn, *args)


def _replace(_result: object, value: _T) -> _T:
    """A callback that replaces a Deferred's result with ``value``."""
    return value


DISK_FULL_RETRY = 1.0
"""Seconds between attempts to write a Ready the disk had no room for (see RaftNode._persist)."""

_READ_CTX = struct.Struct(">Q")
"""The per-node counter part of a ReadIndex context."""


class RaftNode:
    """Drives a RaftCore from the reactor; the API the servers build on."""

    def __init__(
        self,
        core: RaftCore,
        log_store: LogStore,
        state_machine: StateMachine,
        send: Callable[[Message], object],
        *,
        reactor: Any = None,
        executor: Submit | None = None,
        tick_seconds: float = 0.01,
        default_timeout: float = 10.0,
        on_fatal: Callable[[Failure], object] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.core = core
        self.node_id = core.node_id
        self._log_store = log_store
        self._sm = state_machine
        self._send = send
        self._reactor = reactor
        self._executor = executor
        self._own_pool: SerialExecutor | None = None
        self._tick_seconds = tick_seconds
        self.default_timeout = default_timeout
        self._on_fatal = on_fatal
        self._ticker: LoopingCall | None = None
        self._busy = False
        self._stopped = False
        self._failed: Failure | None = None
        # index -> (term, Deferred, timeout call) of proposals waiting for apply
        self._proposals: dict[int, tuple[int, defer.Deferred, Any]] = {}
        self.proposals_failed = 0
        """Proposals that will never be applied as proposed, or whose outcome is unknown:
        overwritten by another leader, timed out, refused on a full log, failed at stop
        (``storg_raft_proposals_failed_total``; a command the state machine refused is not one)."""
        # Reads not yet handed to the core: the next Ready issues one ReadIndex for all.
        self._unissued_reads: list[_ReadWaiter] = []
        # read context -> the reads that share it, waiting for its ReadState
        self._reads: dict[bytes, list[_ReadWaiter]] = {}
        # (index, read) of reads waiting for apply to catch up
        self._reads_waiting_apply: list[tuple[int, _ReadWaiter]] = []
        self._next_read_id = 0
        # A commit-only hard state not yet handed to the store (see _pump).
        self._hard_state_to_save: HardState | None = None
        self._pump_call: Any = None
        self._retry_call: Any = None
        self.log_full = False
        """True while a Ready waits for room on the disk (see _persist)."""
        # The leader keeps pending reads by context, from every node at once,
        # and a heartbeat response acknowledges the read its context names.
        # A context must therefore never be issued twice in the cluster: two
        # followers' counters alike would make the leader drop one read
        # (it then times out), and a context reused after a restart could be
        # acknowledged by a heartbeat sent before the read existed.  So each
        # is this node's id, a random prefix drawn per process, and a counter.
        self._read_prefix = _node_id_bytes(core.node_id) + os.urandom(8)
        self._soft = SoftState(core.leader, core.role, core.term)
        self._role_watchers: list[Callable[[SoftState], object]] = []
        self._snapshot_handler: Callable[[SnapshotMeta], object] | None = None
        self._snapshot_sender: Callable[[Message], object] | None = None
        self._snapshot_gate: SnapshotGate | None = None
        self._apply_watchers: list[Callable[[int], object]] = []
        # (index, Deferred) of compactions waiting for the Ready in flight to finish
        self._compactions: list[tuple[int, defer.Deferred]] = []
        self.applied_index = core.applied_index
        # The (term, vote) on disk: the core was built from it.
        self._persisted_term_vote = (core.term, core.vote)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start ticking.  Storage calls go to a thread of their own (SerialExecutor) unless given an executor."""
        if self._executor is None:
            pool = SerialExecutor(self._reactor, name=f"storg-storage-{self.node_id}")
            self._own_pool = pool
            self._executor = pool
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self._reactor
        self._ticker.start(self._tick_seconds, now=False)
        self._pump()

    def stop(self) -> defer.Deferred:
        """Stop ticking, fail everything pending, and let the storage thread finish."""
        self._stopped = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self._fail_all(NodeStopped("node stopped"))
        compactions, self._compactions = self._compactions, []
        for _index, d in compactions:
            d.errback(NodeStopped("node stopped"))
        pool, self._own_pool = self._own_pool, None
        if pool is not None:
            return pool.stop()  # the calls already handed to it finish first
        return defer.succeed(None)

    def on_role_change(self, watcher: Callable[[SoftState], object]) -> None:
        self._role_watchers.append(watcher)

    def on_snapshot(self, handler: Callable[[SnapshotMeta], object]) -> None:
        """Called when the core installs a snapshot received from the leader.

        The handler restores the state machine from the snapshot's data and
        may return a Deferred: nothing after the snapshot is applied (and no
        message of that Ready is sent) before it fires.  It also sees a
        joiner's index-0 membership, which has no data.
        """
        self._snapshot_handler = handler

    def on_snapshot_message(self, sender: Callable[[Message], object]) -> None:
        """Route the core's SNAPSHOT messages here instead of the peer transport.

        The sender streams the snapshot's data to the follower first, then
        sends the message itself and calls :meth:`report_snapshot`.
        """
        self._snapshot_sender = sender

    def set_snapshot_gate(self, gate: SnapshotGate) -> None:
        """Let SNAPSHOT messages the core would adopt through only if ``gate.admit`` says so."""
        self._snapshot_gate = gate

    def on_applied(self, watcher: Callable[[int], object]) -> None:
        """Called with the applied index after each batch of committed entries.

        It runs on the reactor between two batches, when the state machine
        is exactly at that index: the moment to freeze it for a snapshot.
        """
        self._apply_watchers.append(watcher)

    # -- inputs ------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """A message from a peer.  Never raises: the core ignores what it cannot use."""
        if self._stopped:
            return
        if self.log_full and msg.type in (MessageType.APPEND, MessageType.SNAPSHOT):
            # Held by a full disk (see _persist): entries stepped in now would
            # only pile up in memory, unwritable, for as long as the disk stays
            # full.  Dropping them is a lost message, which Raft tolerates: the
            # leader sends them again once this node answers.
            return
        if tracing.ON:
            tracing.mark("raft.step", f"{msg.type.name} from={msg.frm} index={msg.index} "
                         f"n={len(msg.entries)} commit={msg.commit}")
        if msg.type == MessageType.SNAPSHOT and self._snapshot_gate is not None:
            self._step_snapshot(msg, self._snapshot_gate)
        else:
            self.core.step(msg)
        # Messages read in one reactor turn (two followers' acks, a burst of
        # READ_INDEX requests) are then handled by one Ready.
        self._pump_soon()

    def _step_snapshot(self, msg: Message, gate: SnapshotGate) -> None:
        core = self.core
        snap = msg.snapshot
        if snap is None or snap.index <= core.commit_index or core.term_at(snap.index) == snap.term:
            core.step(msg)  # the core only answers (it has everything the snapshot covers)
            return
        if not gate.admit(msg):
            return
        before = core.snapshot_meta
        try:
            core.step(msg)
        finally:
            gate.settled(msg, before != snap and core.snapshot_meta == snap)

    def propose(self, command: bytes, timeout: float | None = None) -> defer.Deferred:
        """Fires with the state machine's result once ``command`` is committed and applied.

        Fails with NotLeader (with the leader hint), ProposalDropped (refused,
        or overwritten by another leader's entry: it will never apply) or
        Timeout (outcome unknown).
        """
        return self._track(lambda: self.core.propose(command), timeout)

    def propose_conf_change(self, cc: ConfChange, timeout: float | None = None) -> defer.Deferred:
        return self._track(lambda: self.core.propose_conf_change(cc), timeout)

    def read_index(self, timeout: float | None = None) -> defer.Deferred:
        """Fires with an index once this node has applied everything committed
        at the moment of the call: a linearizable read may then be served here.

        Reads are batched: every read that arrives before the next Ready is
        taken shares one ReadIndex (one READ_INDEX message from a follower,
        one slot in the leader's heartbeat round).  That ReadIndex is issued
        after all of them arrived, so its index covers every commit each of
        them must see.  Fails with NotLeader if no leader is known.
        """
        if self._failed is not None or self._stopped:
            return defer.fail(NodeStopped("node stopped"))
        if self.log_full:
            # A ReadIndex needs a Ready (a heartbeat round, or a message to
            # the leader), and none is taken while the held write waits.
            return defer.fail(LogFull(f"{self.node_id}: disk full, its Raft log cannot be written"))
        waiter = _ReadWaiter()
        waiter.call = self._reactor.callLater(
            self.default_timeout if timeout is None else timeout, self._expire_read, waiter)
        self._unissued_reads.append(waiter)
        self._pump_soon()
        return waiter.d

    def transfer_leadership(self, to: str = "", timeout: float | None = None) -> defer.Deferred:
        """Hand leadership over; fires with the new leader's id once it is known.

        Fires with "" if this node stepped down but heard from no successor
        before the timeout; fails with Timeout if it is still the leader.
        """
        if self.core.role != Role.LEADER:
            return defer.fail(NotLeader(self.core.leader))
        self.core.transfer_leadership(to)
        self._pump()
        d: defer.Deferred = defer.Deferred()
        deadline = self._reactor.seconds() + (self.default_timeout if timeout is None else timeout)

        def check() -> None:
            if d.called:
                return
            stepped_down = self.core.role != Role.LEADER
            successor = self.core.leader if self.core.leader != self.node_id else ""
            out_of_time = self._reactor.seconds() >= deadline or self._stopped
            if stepped_down and (successor or out_of_time):
                d.callback(successor)
            elif out_of_time:
                d.errback(Timeout("leadership transfer did not complete"))
            else:
                self._reactor.callLater(self._tick_seconds, check)

        check()
        return d

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The data of a SNAPSHOT message reached ``peer`` (and the message went), or failed."""
        if self._stopped:
            return
        self.core.report_snapshot(peer, ok)
        self._pump()

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The meta for a state-machine snapshot at ``index`` (<= applied); drops nothing."""
        return self.core.snapshot_meta_at(index)

    def run_storage(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` on the storage thread, in order with the log's own calls.

        For work that rewrites log files without changing what they hold
        (the re-encryption pass): it must never run beside an append.
        """
        if self._failed is not None or self._stopped or self._executor is None:
            return defer.fail(NodeStopped("node stopped"))
        return self._executor(fn, *args)

    def compact(self, index: int) -> defer.Deferred:
        """Drop the log up to ``index`` (a durable snapshot covers it).

        Fires with the core's SnapshotMeta, or None if a snapshot at or past
        ``index`` was installed meanwhile.  Waits for the Ready in flight,
        so the core's log never shrinks under a Ready being handled.
        """
        if self._failed is not None or self._stopped:
            return defer.fail(NodeStopped("node stopped"))
        d: defer.Deferred = defer.Deferred()
        self._compactions.append((index, d))
        if not self._busy:
            self._run_compactions()
        return d

    def _run_compactions(self) -> None:
        waiting, self._compactions = self._compactions, []
        for index, d in waiting:
            if index <= self.core.snapshot_meta.index:
                d.callback(None)
                continue
            try:
                meta = self.core.compact(index)
            except ValueError as exc:
                d.errback(exc)
                continue
            executor = self._executor
            assert executor is not None  # start() made one
            executor(self._log_store.compact, meta.index).addCallback(_replace, meta).chainDeferred(d)

    # -- views -----------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def leader(self) -> str:
        return self.core.leader

    @property
    def term(self) -> int:
        return self.core.term

    def is_leader(self) -> bool:
        return self.core.role == Role.LEADER

    @property
    def proposals_pending(self) -> int:
        """Proposals appended and waiting to be applied (``storg_raft_proposals_pending``)."""
        return len(self._proposals)

    def status(self) -> dict[str, Any]:
        """The row of ``storgctl status`` for this node."""
        return {
            "id": self.node_id,
            "role": _role_name(self.core.role),
            "term": self.core.term,
            "leader": self.core.leader,
            "commit_index": self.core.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.core.last_index,
        }

    # -- the Ready loop ----------------------------------------------------

    def _tick(self) -> None:
        if self._stopped:
            return
        self.core.tick()
        self._pump()

    def _track(self, submit: Callable[[], int], timeout: float | None) -> defer.Deferred:
        if self._failed is not None or self._stopped:
            return defer.fail(NodeStopped("node stopped"))
        if self.log_full and self.core.role == Role.LEADER:
            # It could not be written before space is freed: refuse it now (it
            # was never appended, so it will never apply), and the client tries
            # another node, likely the next leader, instead of waiting here.
            self.proposals_failed += 1
            return defer.fail(ProposalDropped(f"{self.node_id}: disk full, its Raft log cannot be written"))
        try:
            index = submit()
        except Exception as exc:
            return defer.fail(exc)
        if tracing.ON:
            tracing.mark("raft.propose", f"index={index}")
        d: defer.Deferred = defer.Deferred()
        call = self._reactor.callLater(
            self.default_timeout if timeout is None else timeout, self._expire_proposal, index)
        self._proposals[index] = (self.core.term, d, call)
        self._pump_soon()
        return d

    def _pump_soon(self) -> None:
        """Take the next Ready at the end of this reactor turn, not now.

        Proposals and reads that arrive in one turn (many clients' frames
        read in one poll) then share one Ready: one write and fsync, one
        APPEND per follower, one ReadIndex.
        """
        if self._pump_call is None:
            self._pump_call = self._reactor.callLater(0, self._pump_later)

    def _pump_later(self) -> None:
        self._pump_call = None
        self._pump()

    def _pump(self) -> None:
        """Take the next Ready if none is being handled."""
        if self._busy or self._stopped or self._failed is not None:
            return
        if self._unissued_reads:
            self._issue_reads()
        if not self.core.has_ready():
            return
        rd = self.core.ready()
        self._busy = True
        if tracing.ON:
            tracing.mark("raft.ready", f"entries={[e.index for e in rd.entries]} "
                         f"committed={[e.index for e in rd.committed_entries]} "
                         f"msgs={len(rd.messages)} reads={len(rd.read_states)}")
        if rd.soft_state is not None:
            self._note_soft_state(rd.soft_state)
        if self._may_send_before_persisting(rd):
            # A leader's appends may go out while it writes the same entries
            # to its own disk (Raft thesis 10.2.1): the core counts the
            # leader's own copy toward commitment only after advance(), so
            # nothing commits on the strength of an unwritten entry, and the
            # leader's fsync overlaps its followers' instead of preceding them.
            self._send_messages(rd)
            rd.messages = []
        hard_state = rd.hard_state
        if hard_state is not None and rd.snapshot is None and not rd.entries and \
                (hard_state.term, hard_state.vote) == self._persisted_term_vote:
            # Only the commit index moved.  Raft never needs it durable (a
            # restarted node learns it again), so this Ready skips the storage
            # thread; the store gets the hard state with the next write.
            self._hard_state_to_save = hard_state
            hard_state = None
        elif hard_state is None and (rd.snapshot is not None or rd.entries):
            hard_state, self._hard_state_to_save = self._hard_state_to_save, None
        else:
            self._hard_state_to_save = None
        if rd.snapshot is not None or rd.entries or hard_state is not None:
            if rd.snapshot is None and rd.committed_entries:
                self._apply_durable_now(rd)
            d = self._persist(rd, hard_state)
        else:
            d = defer.succeed(None)
        d.addCallback(lambda _: self._after_persist(rd))
        d.addErrback(self._fatal)

    def _persist(self, rd: Ready, hard_state: HardState | None) -> defer.Deferred:
        """Write a Ready durably; on a full disk, hold it and write it again until it fits.

        A full disk (``DiskFullError``: the WAL cut its partial write back,
        or the hard state's temporary file went) is not the end of the node,
        as it was: the Ready stays the one in flight, exactly as if the
        fsync were slow.  Nothing of it is acknowledged meanwhile (its
        messages wait for the write, except a leader's APPENDs of its own
        new entries, which Raft allows to go before the leader's write since
        its own copy counts toward commitment only after ``advance``), no
        vote is cast, no later Ready is taken, and the proposals wait (they
        time out with the outcome unknown, which it is: followers may hold
        them).  A leader that sends nothing is soon replaced by its
        followers' election, so the cluster goes on without it.  The write
        is tried again every ``DISK_FULL_RETRY`` seconds (sooner at first)
        and the node resumes by itself once space is freed.  Writing the
        same Ready twice is harmless: a WAL record replaces the log from its
        first index, and the hard state is replaced whole.

        Any other storage error, and a failed fsync (after which the WAL
        refuses every write: the kernel may have dropped the pages), stays
        fatal.
        """
        executor = self._executor
        assert executor is not None  # start() made one
        attempts = [0]

        def write() -> defer.Deferred:
            assert executor is not None
            if tracing.ON:
                tracing.mark("raft.persist_submit", f"n={len(rd.entries)}")
            d = executor(self._log_store.persist, rd.snapshot, rd.entries, hard_state)
            d.addCallbacks(written, full)
            return d

        def written(result: object) -> object:
            if attempts[0]:
                log.info("{node}: the Raft log is writable again after {n} attempts; resuming",
                         node=self.node_id, n=attempts[0] + 1)
                self.log_full = False
            return result

        def full(failure: Failure) -> Any:
            if self._stopped or not failure.check(DiskFullError):
                return failure
            if not attempts[0]:
                log.warn("{node}: disk full, the Raft log cannot be written ({why}); holding "
                         "this node's log writes (no acknowledgement, no vote) and retrying "
                         "until space is freed", node=self.node_id, why=failure.getErrorMessage())
                self.log_full = True
            attempts[0] += 1
            delay = min(DISK_FULL_RETRY, 0.05 * 2 ** min(attempts[0], 10))
            waited: defer.Deferred = defer.Deferred()
            self._retry_call = self._reactor.callLater(delay, waited.callback, None)

            def again(_: object) -> Any:
                self._retry_call = None
                if self._stopped:
                    raise NodeStopped("node stopped while its log was full")
                return write()

            return waited.addCallback(again)

        return write()

    def _apply_durable_now(self, rd: Ready) -> None:
        """Apply, before this Ready's write, the committed entries an earlier Ready wrote.

        Under load a leader's Ready carries the entries committed by the
        last round and the new proposals to write.  The committed ones are
        already on this disk (every entry below ``rd.entries[0]`` was
        written by an earlier Ready, one at a time) and on a majority's, so
        the order "persist, then apply" holds for them without waiting for
        this Ready's fsync; their clients are answered one fsync sooner.
        Entries this Ready itself writes are applied after it, as before.
        """
        first_new = rd.entries[0].index if rd.entries else None
        applied = False
        # (The state machine is then ahead of core.applied_index until
        # advance(); nothing reads the core's figure in between.)
        for entry in rd.committed_entries:
            if first_new is not None and entry.index >= first_new:
                break
            self._apply(entry)
            applied = True
        if applied:
            # The on_applied watchers wait for _finish_ready: a snapshot may
            # only be taken once the core has been told (advance) too.
            self._release_reads()

    def _may_send_before_persisting(self, rd: Ready) -> bool:
        """True for a leader's Ready that changes no term or vote.

        Only the leader's own new entries are then unwritten, which its
        messages may carry (see _pump).  A Ready that changes the term or
        the vote must be on disk before any message that depends on it.
        """
        if self.core.role != Role.LEADER or not rd.messages:
            return False
        hs = rd.hard_state
        return hs is None or (hs.term, hs.vote) == self._persisted_term_vote

    def _send_messages(self, rd: Ready) -> None:
        for msg in rd.messages:
            if tracing.ON:
                tracing.mark("raft.send", f"{msg.type.name} to={msg.to} index={msg.index} "
                             f"n={len(msg.entries)} commit={msg.commit}")
            if msg.type == MessageType.SNAPSHOT and self._snapshot_sender is not None:
                self._snapshot_sender(msg)
            else:
                self._send(msg)

    def _after_persist(self, rd: Ready) -> defer.Deferred | None:
        if tracing.ON:
            tracing.mark("raft.persisted", f"n={len(rd.entries)}")
        if rd.hard_state is not None:
            self._persisted_term_vote = (rd.hard_state.term, rd.hard_state.vote)
        if self._stopped:
            return None
        if rd.snapshot is not None and self._snapshot_handler is not None:
            # Restoring a large snapshot takes a thread: the rest of this
            # Ready (messages, entries after the snapshot) waits for it.
            d = defer.maybeDeferred(self._snapshot_handler, rd.snapshot)
            return d.addCallback(lambda _: self._finish_ready(rd))
        self._finish_ready(rd)
        return None

    def _finish_ready(self, rd: Ready) -> None:
        if self._stopped:
            return
        if rd.snapshot is not None:
            self.applied_index = max(self.applied_index, rd.snapshot.index)
        self._send_messages(rd)
        for entry in rd.committed_entries:
            self._apply(entry)
        for rs in rd.read_states:
            self._read_became_safe(rs)
        self._release_reads()
        self.core.advance(rd)
        self._busy = False
        if self._compactions:
            self._run_compactions()
        if rd.committed_entries:
            self._notify_applied()
        self._pump()

    def _notify_applied(self) -> None:
        for watcher in list(self._apply_watchers):
            try:
                watcher(self.applied_index)
            except Exception:  # an observer must not stop the Ready loop
                log.failure("{node}: applied-index watcher failed", node=self.node_id)

    def _apply(self, entry: Entry) -> None:
        if entry.index <= self.applied_index:
            return
        result: Any = None
        error: BaseException | None = None
        if entry.data or entry.type == EntryType.CONF_CHANGE:
            try:
                result = self._sm.apply(entry)
            except Exception as exc:  # a deterministic refusal is the command's answer
                error = exc
        self.applied_index = entry.index
        if tracing.ON:
            tracing.mark("raft.applied", f"index={entry.index}")
        waiting = self._proposals.pop(entry.index, None)
        if waiting is None:
            return
        term, d, call = waiting
        if call.active():
            call.cancel()
        if term != entry.term:
            self.proposals_failed += 1
            d.errback(ProposalDropped("overwritten by another leader's entry"))
        elif error is not None:
            d.errback(error)
        else:
            d.callback(result)

    def _issue_reads(self) -> None:
        """One ReadIndex for every read waiting to be issued (see read_index)."""
        batch, self._unissued_reads = self._unissued_reads, []
        batch = [w for w in batch if not w.d.called]
        if not batch:
            return
        self._next_read_id += 1
        ctx = self._read_prefix + _READ_CTX.pack(self._next_read_id)
        try:
            self.core.read_index(ctx)
        except Exception as exc:
            for waiter in batch:
                waiter.fail(exc)
            return
        for waiter in batch:
            waiter.ctx = ctx
        self._reads[ctx] = batch

    def _read_became_safe(self, rs: ReadState) -> None:
        batch = self._reads.pop(rs.context, None)
        if batch is None:
            return
        self._reads_waiting_apply.extend((rs.index, w) for w in batch if not w.d.called)

    def _release_reads(self) -> None:
        if not self._reads_waiting_apply:
            return
        still = []
        for index, waiter in self._reads_waiting_apply:
            if index <= self.applied_index:
                waiter.succeed(index)
            else:
                still.append((index, waiter))
        self._reads_waiting_apply = still

    def _note_soft_state(self, soft: SoftState) -> None:
        old, self._soft = self._soft, soft
        if soft.role == old.role and soft.leader == old.leader and soft.term == old.term:
            return
        if soft.role == Role.LEADER and old.role != Role.LEADER:
            log.info("{node} became leader in term {term}", node=self.node_id, term=soft.term)
        elif soft.role != old.role:
            log.info("{node} is now {role} in term {term} (leader {leader})", node=self.node_id,
                     role=_role_name(soft.role), term=soft.term, leader=soft.leader or "unknown")
        elif soft.leader != old.leader:
            log.info("{node} follows {leader} in term {term}", node=self.node_id,
                     leader=soft.leader or "nobody", term=soft.term)
        if old.role == Role.LEADER and soft.role != Role.LEADER:
            # Reads confirmed by our leadership can no longer be confirmed.
            reads, self._reads = self._reads, {}
            for batch in reads.values():
                for waiter in batch:
                    waiter.fail(NotLeader(soft.leader))
        for watcher in list(self._role_watchers):
            watcher(soft)

    # -- failures ----------------------------------------------------------

    def _expire_proposal(self, index: int) -> None:
        waiting = self._proposals.pop(index, None)
        if waiting is not None:
            self.proposals_failed += 1
            waiting[1].errback(Timeout(f"entry {index} not applied in time"))

    def _expire_read(self, waiter: _ReadWaiter) -> None:
        waiter.fail(Timeout("read not confirmed in time"))
        if waiter.ctx is None:
            if waiter in self._unissued_reads:
                self._unissued_reads.remove(waiter)
            return
        batch = self._reads.get(waiter.ctx)
        if batch is not None and all(w.d.called for w in batch):
            del self._reads[waiter.ctx]  # its ReadState may never come: forget it

    def _fail_all(self, exc: Exception) -> None:
        proposals, self._proposals = self._proposals, {}
        self.proposals_failed += len(proposals)
        for _term, d, call in proposals.values():
            if call.active():
                call.cancel()
            d.errback(exc)
        unissued, self._unissued_reads = self._unissued_reads, []
        reads, self._reads = self._reads, {}
        waiting, self._reads_waiting_apply = self._reads_waiting_apply, []
        for waiter in unissued + [w for batch in reads.values() for w in batch] + \
                [w for _index, w in waiting]:
            waiter.fail(exc)

    def _fatal(self, failure: Failure) -> None:
        """Storage failed: nothing after this point can be trusted to be durable."""
        if self._stopped and failure.check(NodeStopped):
            return  # stopped while a write waited for room: nothing failed
        self._failed = failure
        log.failure("{node}: storage failed; stopping the node", failure, node=self.node_id)
        self._fail_all(NodeStopped("storage failed"))
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._on_fatal is not None:
            self._on_fatal(failure)


class _ReadWaiter:
    """One caller of read_index: its Deferred, its timeout, and the context it shares once issued."""

    __slots__ = ("call", "ctx", "d")

    def __init__(self) -> None:
        self.d: defer.Deferred = defer.Deferred()
        self.call: Any = None
        self.ctx: bytes | None = None

    def succeed(self, index: int) -> None:
        self._stop_timer()
        if not self.d.called:
            self.d.callback(index)

    def fail(self, exc: BaseException) -> None:
        self._stop_timer()
        if not self.d.called:
            self.d.errback(exc)

    def _stop_timer(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()


def _node_id_bytes(node_id: str) -> bytes:
    """``node_id`` as a length-prefixed byte string, so no two ids give overlapping prefixes."""
    raw = node_id.encode("utf-8")
    return bytes([min(len(raw), 255)]) + raw[:255]


def _role_name(role: Role) -> str:
    return {
        Role.LEADER: "leader",
        Role.FOLLOWER: "follower",
        Role.CANDIDATE: "candidate",
        Role.PRE_CANDIDATE: "candidate",
        Role.LEARNER: "learner",
    }[role]


__all__ = ["LogFull", "LogStore", "NodeStopped", "RaftNode", "StateMachine", "Timeout", "run_inline"]
