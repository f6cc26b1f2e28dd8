"""The Raft state machine: a pure, deterministic object fed inputs, drained of outputs.

Structure follows etcd's raft.go: ``step`` handles terms and votes for
every role, then dispatches to one function per role (``_step_leader``,
``_step_candidate``, ``_step_follower``); the leader keeps a
:class:`~storg.raft.progress.Progress` per peer.  There is no clock (time is
``tick()``), no randomness but the ``random.Random`` handed in, and no I/O:
everything to persist, send and apply comes out of :meth:`RaftCore.ready`.

Design choices worth knowing:

* **Membership takes effect on append** (dissertation 4.1): every server
  uses the latest configuration in its log, committed or not, and reverts
  it if that suffix is truncated.  Together with "one change at a time",
  "no change before the leader committed an entry of its term" and
  "no change while another is uncommitted", any two majorities in use
  overlap.  A leader that removes (or demotes) itself keeps leading without
  counting itself until the change commits, then steps down.
* **Proposals are batched**: ``propose`` only appends; the APPENDs are built
  when the driver asks for a Ready, so everything proposed since the last
  Ready goes out in as few messages as the byte limit allows.
* **The leader's own log counts only once persisted**: its own match index
  moves in :meth:`advance`, never when it appends.
* **Pre-vote lease**: a PRE_VOTE is refused (ignored) by any node that heard
  from a leader within the minimum election timeout, with or without
  check-quorum (dissertation 9.6); with check-quorum the same lease also
  makes VOTE requests from a higher term be ignored, unless they follow a
  leadership transfer (``context == b"transfer"``).
* **Joining nodes learn the founding membership**: a node started with an
  empty configuration (waiting to be added) cannot tell the voters at index
  0 from the log, so an APPEND from index 0 carries the leader's index-0
  SnapshotMeta; the joiner adopts it and reports it in ``Ready.snapshot``
  (index 0: nothing to restore, only the membership to persist).  Until then
  it never campaigns.
* **Removed servers hear of their removal**: the leader keeps replicating to
  a removed server until the removal commits.
* **Messages from outside the configuration are dropped** (``_known_sender``),
  as etcd's transport drops removed members': a sender must be a member
  (voter or learner) of the latest configuration in the log *or* of the
  committed one.  Both, because the latest may hold an uncommitted removal of
  the server that has since won an election (the removal's leader crashed,
  the entry will be truncated): a filter on the latest alone would leave this
  node deaf to its new leader forever.  A sender in neither is either
  removed by a committed entry (it can never lead again under that id
  unless added back, and then a node that has not seen the addition lacks
  its address too, so it could not answer it anyway) or added by an entry
  this node has not appended (same: the driver learns a member's address
  only when the addition applies).  So dropping costs no liveness a real
  node has, and stops a higher-term APPEND or SNAPSHOT, a vote or a
  response naming a stranger.  A node waiting to join (no configuration
  yet) cannot judge and accepts any sender: its transport only admits the
  members its configuration file lists.  A READ_INDEX_RESP is taken only
  from the leader this node follows.  Nothing here authenticates a sender
  that names a member: that is the transport's job (instance ids, TLS).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from storg.raft.errors import NotLeader, ProposalDropped, ProposalTooLarge
from storg.raft.log import RaftLog
from storg.raft.progress import Progress, ProgressState, ProgressView
from storg.raft.quorum import VoteResult, apply_conf_change, committed_index, has_quorum, vote_result
from storg.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

__all__ = ["CoreStatus", "RaftConfig", "RaftCore", "ProgressView", "TRANSFER_CONTEXT"]

TRANSFER_CONTEXT = b"transfer"
"""VOTE context of a campaign that follows TIMEOUT_NOW: it may break the lease."""

MT = MessageType


class CoreStatus(TypedDict):
    """What :meth:`RaftCore.status` returns (a plain dict at run time)."""

    id: str
    role: str
    term: int
    leader: str
    commit_index: int
    applied_index: int
    last_index: int
    voters: list[str]
    learners: list[str]


@dataclass(frozen=True)
class RaftConfig:
    """Tuning of one core; times are in ticks."""

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    """An APPEND carries entries up to this many bytes (``Entry.size``), or one larger entry."""
    max_entry_bytes: int = 4 << 20
    """The largest entry data proposed (ProposalTooLarge above).  With ``max_msg_bytes`` it
    bounds every APPEND: at most max(max_msg_bytes, max_entry_bytes + 24) bytes of entries,
    which the node keeps under the peer frame limit (storg.config.MAX_PROPOSAL_LIMIT)."""
    max_inflight: int = 64
    max_uncommitted_bytes: int = 64 << 20
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_msg_bytes < 1 or self.max_entry_bytes < 1:
            raise ValueError("max_inflight, max_msg_bytes and max_entry_bytes must be positive")


@dataclass
class _ReadRequest:
    """A ReadIndex request waiting for a heartbeat round to confirm leadership."""

    index: int
    requester: str
    acks: set[str]


class RaftCore:
    """One Raft server's consensus state.

    Inputs: ``tick``, ``step``, ``propose``, ``propose_conf_change``,
    ``read_index``, ``transfer_leadership``, ``campaign``, ``compact``,
    ``report_snapshot``.  Outputs: ``ready()`` /
    ``advance()`` (see :class:`~storg.raft.types.Ready` for the order the
    driver must follow).  The public attributes (``term``, ``vote``, ``role``,
    ``leader``, ``applied_index``) and properties are read-only views.
    """

    def __init__(self, node_id: str, config: RaftConfig, rng: random.Random, *,
                 hard_state: HardState = HardState(),
                 snapshot: SnapshotMeta = SnapshotMeta(),
                 entries: Sequence[Entry] = (),
                 applied: int = 0) -> None:
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self._log = RaftLog(snapshot, entries)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self._log.commit_to(max(hard_state.commit, snapshot.index))
        self.leader = NONE
        self.role = Role.FOLLOWER
        # Configuration history: the snapshot's, then one per CONF_CHANGE entry
        # still in the log (config takes effect on append).
        self._conf_base = snapshot.conf
        self._conf_log: list[tuple[int, ConfState]] = []
        self._scan_conf(list(entries))
        self.applied_index = max(applied, snapshot.index)
        self._applied_emitted = self.applied_index
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._votes: dict[str, bool] = {}
        self._prs: dict[str, Progress] = {}
        self._lead_transferee = NONE
        self._uncommitted_bytes = 0
        self._reads: dict[bytes, _ReadRequest] = {}  # insertion-ordered queue
        self._deferred_reads: list[tuple[bytes, str]] = []
        self._read_heartbeat_due = False
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_snapshot: SnapshotMeta | None = None
        # Leader: something happened that may let APPENDs go out at the next Ready.
        self._flush_due = False
        self._prev_hard = HardState(self.term, self.vote, self._log.committed)
        self.role = self._follower_role()
        self._prev_soft = SoftState(self.leader, self.role, self.term)

    # ------------------------------------------------------------------ views

    @property
    def conf(self) -> ConfState:
        """The membership in force: the latest configuration in the log."""
        return self._conf_log[-1][1] if self._conf_log else self._conf_base

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def first_index(self) -> int:
        return self._log.first_index

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        return self._log.snapshot

    def term_at(self, index: int) -> int | None:
        return self._log.term_at(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self._log.slice(lo, hi)

    def progress(self) -> dict[str, ProgressView]:
        """Leader only (empty otherwise): peer -> (match, next, state name)."""
        if self.role != Role.LEADER:
            return {}
        return {peer: pr.view() for peer, pr in self._prs.items()}

    def status(self) -> CoreStatus:
        conf = self.conf
        return {
            "id": self.node_id,
            "role": self.role.name.lower(),
            "term": self.term,
            "leader": self.leader,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "last_index": self.last_index,
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
        }

    # ------------------------------------------------------------ local inputs

    def tick(self) -> None:
        """One unit of time passed."""
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        return self._propose(EntryType.NORMAL, bytes(data))

    def propose_conf_change(self, cc: ConfChange) -> int:
        if not cc.node_id:
            raise ValueError("a configuration change must name a node")
        if self.role == Role.LEADER:
            if self.term_at(self.commit_index) != self.term:
                raise ProposalDropped("no entry of this leader's term is committed yet")
            if self._conf_log and self._conf_log[-1][0] > self.commit_index:
                raise ProposalDropped("another configuration change is uncommitted")
            if not apply_conf_change(self.conf, cc).voters:
                raise ProposalDropped("the change would leave no voter")
        return self._propose(EntryType.CONF_CHANGE, cc.encode())

    def read_index(self, context: bytes) -> None:
        if self.role == Role.LEADER:
            self._leader_read(bytes(context), self.node_id)
            return
        if not self.leader:
            raise NotLeader(NONE)
        self._send(MT.READ_INDEX, self.leader, context=bytes(context))

    def transfer_leadership(self, to: str = "") -> None:
        if self.role == Role.LEADER:
            self._start_transfer(to)
            return
        if not self.leader:
            raise NotLeader(NONE)
        self._send(MT.TRANSFER_LEADER, self.leader, context=to.encode("utf-8"))

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The meta a state-machine snapshot taken at ``index`` (<= applied) carries.

        Nothing is dropped: the driver writes the snapshot first and calls
        :meth:`compact` only once it is durable.
        """
        snap = self._log.snapshot
        if index == snap.index:
            return snap
        if index < snap.index or index > self.applied_index:
            raise ValueError(
                f"snapshot_meta_at({index}) outside [{snap.index}, applied={self.applied_index}]")
        term = self._log.term_at(index)
        if term is None:
            raise ValueError(f"snapshot_meta_at({index}): not in the log")
        return SnapshotMeta(index, term, self._conf_at(index))

    def compact(self, index: int) -> SnapshotMeta:
        """Drop entries up to ``index`` (<= applied); return the snapshot's meta."""
        snap = self._log.snapshot
        if index == snap.index:
            return snap
        if index < snap.index or index > self.applied_index:
            raise ValueError(
                f"compact({index}) outside [{snap.index}, applied={self.applied_index}]")
        conf = self._conf_at(index)
        meta = self._log.compact(index, conf)
        self._conf_base = conf
        self._conf_log = [(i, c) for i, c in self._conf_log if i > index]
        self._flush_due = True
        return meta

    def report_snapshot(self, peer: str, ok: bool) -> None:
        pr = self._prs.get(peer) if self.role == Role.LEADER else None
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        self._flush_due = True
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or the next heartbeat) before more.
        pr.probe_sent = True

    # ------------------------------------------------------------------ Ready

    def has_ready(self) -> bool:
        self._flush()
        log = self._log
        if self._msgs or self._read_states or self._pending_snapshot is not None \
                or log.emitted < log.last_index or self._applied_emitted < log.committed:
            return True
        hard, soft = self._prev_hard, self._prev_soft
        return (hard.term != self.term or hard.vote != self.vote or hard.commit != log.committed
                or soft.leader != self.leader or soft.role != self.role or soft.term != self.term)

    def ready(self) -> Ready:
        """Collect everything to persist, send and apply (see types.Ready)."""
        self._flush()
        log = self._log
        rd = Ready()
        soft = self._soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hard = self._hard_state()
        if hard != self._prev_hard:
            rd.hard_state = hard
            self._prev_hard = hard
        if self._pending_snapshot is not None:
            rd.snapshot = self._pending_snapshot
            self._pending_snapshot = None
        rd.entries = log.unemitted()
        log.emitted = log.last_index
        if self._applied_emitted < log.committed:
            rd.committed_entries = log.slice(self._applied_emitted + 1, log.committed + 1)
            self._applied_emitted = log.committed
        rd.messages, self._msgs = self._msgs, []
        rd.read_states, self._read_states = self._read_states, []
        return rd

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied ``ready``."""
        log = self._log
        if ready.snapshot is not None:
            log.stable_to(ready.snapshot.index, ready.snapshot.term)
            self.applied_index = max(self.applied_index, ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self.applied_index = max(self.applied_index, ready.committed_entries[-1].index)
        if self.role == Role.LEADER:
            self._flush_due = True
            own = self._prs.get(self.node_id)
            if own is not None and own.maybe_update(min(log.stable, log.last_index)):
                self._maybe_commit()

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self._log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role, self.term)

    # ------------------------------------------------------------ step: terms

    def step(self, m: Message) -> None:
        """Handle a message from a peer; stale or malformed input is ignored."""
        if m.to != self.node_id or m.frm == self.node_id or not m.frm:
            return
        if not self._known_sender(m.frm):
            return
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                if self._in_lease(m):
                    return
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                # A pre-vote never changes terms: the asker's term is hypothetical.
                pass
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            self._step_stale(m)
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
            self._flush_due = True
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _known_sender(self, peer: str) -> bool:
        """Is ``peer`` a member of the latest or of the committed configuration (module docstring)?"""
        if self._log.snapshot.index == 0 and not self._conf_base.voters:
            return True  # waiting to join: no configuration to judge by
        if peer in self.conf.members():
            return True
        return peer in self._conf_at(self._log.committed).members()

    def _in_lease(self, m: Message) -> bool:
        """Should a vote request be ignored because a live leader is known?"""
        if m.context == TRANSFER_CONTEXT and m.type == MT.VOTE:
            return False
        if m.type == MT.PRE_VOTE or self.config.check_quorum:
            return bool(self.leader) and self._election_elapsed < self.config.election_ticks
        return False

    def _step_stale(self, m: Message) -> None:
        """A message from an older term: mostly ignored, sometimes answered.

        A node whose term ran ahead (a failed election in a partition) must
        tell the old leader about its term, or with check-quorum/pre-vote it
        could never rejoin: answer APPEND/HEARTBEAT with our term.  A
        PRE_VOTE from a lower term gets an explicit refusal.
        """
        cfg = self.config
        if m.type in (MT.APPEND, MT.HEARTBEAT) and (cfg.check_quorum or cfg.pre_vote):
            self._send(MT.APPEND_RESP, m.frm)
        elif m.type == MT.PRE_VOTE:
            self._send(MT.PRE_VOTE_RESP, m.frm, reject=True)

    def _handle_vote_request(self, m: Message) -> None:
        """Raft 5.2/5.4.1 vote rules, shared by all roles."""
        pre = m.type == MT.PRE_VOTE
        resp = MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.leader == NONE)
            or (pre and m.term > self.term)
        )
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            # The response carries the request's term so the (pre-)candidate
            # counts it; for a real vote that is our term now anyway.
            self._msgs.append(Message(resp, self.node_id, m.frm, term=m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(resp, m.frm, reject=True)

    # ------------------------------------------------------- step: per role

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.READ_INDEX:
            if m.frm in self.conf.members():
                self._leader_read(m.context, m.frm)
            return
        if t == MT.TRANSFER_LEADER:
            try:
                target = m.context.decode("utf-8")
            except UnicodeDecodeError:
                return
            self._start_transfer(target)
            return
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            self._handle_heartbeat_resp(m, pr)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # Someone won this term: follow it (Raft 5.2).
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
        elif (t == MT.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE) or (
                t == MT.VOTE_RESP and self.role == Role.CANDIDATE):
            if m.frm not in self._votes:
                self._votes[m.frm] = not m.reject
            self._tally()

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APPEND:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._log.commit_to(m.commit)
            self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context)
        elif t == MT.SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif t == MT.TIMEOUT_NOW:
            if self._promotable():
                self._hup(transfer=True)
        elif t == MT.READ_INDEX_RESP and m.frm == self.leader:
            self._read_states.append(ReadState(m.index, m.context))

    # --------------------------------------------------------- elections

    def _promotable(self) -> bool:
        if self._log.snapshot.index == 0 and not self._conf_base.voters:
            # Waiting to join: the membership at index 0 is unknown until the
            # leader tells us, so a configuration replayed from our log alone
            # would be missing the founding voters.
            return False
        return self.node_id in self.conf.voters

    def _follower_role(self) -> Role:
        return Role.FOLLOWER if self._promotable() else Role.LEARNER

    def _reset_randomized_timeout(self) -> None:
        n = self.config.election_ticks
        self._randomized_timeout = self._rng.randrange(n, 2 * n)

    def _reset(self, term: int) -> None:
        """Common to every role change: clear per-term and per-role state."""
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._prs = {}
        self._lead_transferee = NONE
        self._uncommitted_bytes = 0
        self._reads = {}
        self._deferred_reads = []
        self._read_heartbeat_due = False

    def _become_follower(self, term: int, leader: str) -> None:
        self._reset(term)
        self.leader = leader
        self.role = self._follower_role()

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._promotable():
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
        else:
            self._become_candidate(transfer)

    def _become_pre_candidate(self) -> None:
        """Dissertation 9.6: ask for votes for term+1 without changing our term."""
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._request_votes(MT.PRE_VOTE, self.term + 1, b"")

    def _become_candidate(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.vote = self.node_id
        self.role = Role.CANDIDATE
        self._request_votes(MT.VOTE, self.term, TRANSFER_CONTEXT if transfer else b"")

    def _request_votes(self, mtype: MessageType, term: int, context: bytes) -> None:
        self._votes[self.node_id] = True
        if self._tally():
            return
        last_index, last_term = self._log.last_index, self._log.last_term
        for peer in sorted(self.conf.voters):
            if peer != self.node_id:
                self._msgs.append(Message(mtype, self.node_id, peer, term=term,
                                          index=last_index, log_term=last_term,
                                          context=context))

    def _tally(self) -> bool:
        """Act on the votes so far; True if the election is decided."""
        result = vote_result(self.conf.voters, self._votes)
        if result == VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                self._become_candidate(transfer=False)
            else:
                self._become_leader()
            return True
        if result == VoteResult.LOST:
            self._become_follower(self.term, NONE)
            return True
        return False

    # ------------------------------------------------------------ leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.node_id
        last = self._log.last_index
        for peer in self.conf.members() | {self.node_id}:
            self._prs[peer] = Progress(last + 1, self.config.max_inflight)
        own = self._prs[self.node_id]
        own.become_replicate()
        own.maybe_update(min(self._log.stable, last))
        own.recent_active = True
        # The no-op of paper section 8: commits the previous terms' entries and
        # lets ReadIndex and conf changes proceed.
        self._append_own(EntryType.NORMAL, b"")

    def _tick_leader(self) -> None:
        cfg = self.config
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            for peer, pr in self._prs.items():
                pr.recent_active = peer == self.node_id
            if self._lead_transferee:
                self._lead_transferee = NONE
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = [p for p, pr in self._prs.items() if pr.recent_active]
        return has_quorum(self.conf.voters, active)

    def _propose(self, etype: EntryType, data: bytes) -> int:
        if len(data) > self.config.max_entry_bytes:
            # Too big on any node: refused before the leader question, not redirected.
            raise ProposalTooLarge(len(data), self.config.max_entry_bytes)
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self._lead_transferee:
            raise ProposalDropped("leadership transfer in progress")
        size = len(data) + 24
        if self._uncommitted_bytes > 0 and \
                self._uncommitted_bytes + size > self.config.max_uncommitted_bytes:
            raise ProposalDropped("too many uncommitted bytes")
        return self._append_own(etype, data)

    def _append_own(self, etype: EntryType, data: bytes) -> int:
        self._flush_due = True
        entry = Entry(self.term, self._log.last_index + 1, etype, data)
        self._log.append([entry])
        self._uncommitted_bytes += entry.size()
        if etype == EntryType.CONF_CHANGE:
            self._scan_conf([entry])
        return entry.index

    def _maybe_commit(self) -> None:
        """Commit the majority-replicated index if it is of this term (Figure 8)."""
        matches = {p: pr.match for p, pr in self._prs.items()}
        idx = committed_index(self.conf.voters, matches)
        log = self._log
        if idx <= log.committed or log.term_at(idx) != self.term:
            return
        old = log.committed
        log.commit_to(idx)
        freed = sum(log.entry(i).size() for i in range(old + 1, idx + 1)
                    if log.entry(i).term == self.term)
        self._uncommitted_bytes = max(0, self._uncommitted_bytes - freed)
        if self._deferred_reads:
            deferred, self._deferred_reads = self._deferred_reads, []
            for ctx, requester in deferred:
                self._leader_read(ctx, requester)
        if not self._conf_log or self._conf_log[-1][0] <= log.committed:
            self._forget_removed_peers()
            if self.node_id not in self.conf.voters:
                # Removed (or demoted) itself, and the change is committed.
                self._become_follower(self.term, NONE)

    def _forget_removed_peers(self) -> None:
        """Stop replicating to servers removed by a now committed change.

        Until the removal commits the leader keeps sending them the log, so
        they see the entry that removes them and stop campaigning.
        """
        members = self.conf.members()
        for peer in [p for p in self._prs if p != self.node_id and p not in members]:
            del self._prs[peer]

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            if pr.maybe_decr_to(m.index, self._next_after_reject(m)):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
            return
        if m.index > self._log.last_index:
            return  # acknowledges entries we never had: not from this term's log
        was_probe = pr.state == ProgressState.PROBE
        if pr.maybe_update(m.index) or (was_probe and pr.match == m.index):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            elif pr.state == ProgressState.REPLICATE:
                pr.free_acked(m.index)
            self._maybe_commit()
            if self.role != Role.LEADER:
                return
        if m.frm == self._lead_transferee and pr.match == self._log.last_index:
            self._send(MT.TIMEOUT_NOW, m.frm)

    def _next_after_reject(self, m: Message) -> int:
        """Fast backtracking: where to resume after a rejection, skipping whole terms."""
        if m.hint_term == 0:
            return m.reject_hint
        j = self._log.last_index_of_term(m.hint_term, m.index)
        return j + 1 if j is not None else m.reject_hint

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.match < self._log.last_index:
            # Entries are unacknowledged: maybe an APPEND was lost.  An empty
            # APPEND at the window's end makes the follower reveal a gap.
            if pr.inflight_full():
                pr.free_first()
            pr.send_empty = True
        if m.context and m.context in self._reads:
            self._ack_read(m.context, m.frm)

    def _flush(self) -> None:
        """Leader: build the APPENDs (and read heartbeats) that are due now.

        Deferred to Ready time so that everything proposed or acknowledged
        since the last Ready goes out in as few messages as possible.
        """
        if self.role != Role.LEADER or not self._flush_due:
            return
        self._flush_due = False
        if self._read_heartbeat_due:
            self._read_heartbeat_due = False
            self._broadcast_heartbeat()
        for peer in sorted(self._prs):
            if peer != self.node_id:
                self._send_appends(peer)

    def _send_appends(self, peer: str) -> None:
        pr = self._prs[peer]
        log = self._log
        if pr.state == ProgressState.PROBE:
            if not pr.probe_sent:
                self._send_append(peer, pr)
            return
        if pr.state != ProgressState.REPLICATE:
            return
        sent = False
        while not pr.is_paused() and pr.next <= log.last_index:
            if not self._send_append(peer, pr):
                return
            sent = True
        # No APPEND only to say that the commit index moved: it rides on the
        # next APPEND (the next proposal's) or the next heartbeat.  An empty
        # APPEND per commit, and its answer, were two of every small put's
        # five messages per follower; followers now apply up to one
        # heartbeat later when the leader falls idle (etcd sends them,
        # hashicorp/raft waits for the next batch or its commit timeout).
        if not sent and not pr.is_paused() and pr.send_empty:
            self._send_append(peer, pr)
        pr.send_empty = False

    def _send_append(self, peer: str, pr: Progress) -> bool:
        """Send one APPEND from ``pr.next`` (or a SNAPSHOT); False if nothing went."""
        log = self._log
        prev = pr.next - 1
        prev_term = log.term_at(prev)
        if prev_term is None or pr.next < log.first_index:
            return self._send_snapshot(peer, pr)
        ents: list[Entry] = []
        if pr.next <= log.last_index:
            ents = log.slice(pr.next, log.last_index + 1, self.config.max_msg_bytes)
        # An APPEND from the very start of the log carries the membership at
        # index 0, which a joining node cannot learn from the entries.
        genesis = log.snapshot if prev == 0 else None
        self._msgs.append(Message(MT.APPEND, self.node_id, peer, term=self.term,
                                  index=prev, log_term=prev_term, entries=tuple(ents),
                                  commit=log.committed, snapshot=genesis))
        if ents:
            pr.sent_entries(ents[-1].index)
        else:
            pr.sent_probe()
        return True

    def _send_snapshot(self, peer: str, pr: Progress) -> bool:
        if not pr.recent_active:
            # Do not start streaming a snapshot to a peer that may be down.
            return False
        snap = self._log.snapshot
        self._msgs.append(Message(MT.SNAPSHOT, self.node_id, peer, term=self.term,
                                  snapshot=snap))
        pr.become_snapshot(snap.index)
        return True

    def _broadcast_heartbeat(self) -> None:
        ctx = next(reversed(self._reads)) if self._reads else b""
        for peer in sorted(self._prs):
            if peer == self.node_id:
                continue
            pr = self._prs[peer]
            self._msgs.append(Message(MT.HEARTBEAT, self.node_id, peer, term=self.term,
                                      commit=min(pr.match, self._log.committed),
                                      context=ctx))

    # ----------------------------------------------------------- ReadIndex

    def _leader_read(self, ctx: bytes, requester: str) -> None:
        if self.term_at(self.commit_index) != self.term:
            # Our commit index may lag the last leader's (dissertation 6.4).
            self._deferred_reads.append((ctx, requester))
            return
        if ctx in self._reads:
            return
        self._reads[ctx] = _ReadRequest(self.commit_index, requester, {self.node_id})
        if not self._release_reads(ctx):
            self._read_heartbeat_due = True
            self._flush_due = True

    def _ack_read(self, ctx: bytes, peer: str) -> None:
        self._reads[ctx].acks.add(peer)
        self._release_reads(ctx)

    def _release_reads(self, ctx: bytes) -> bool:
        """If ``ctx`` is confirmed by a majority, answer it and all older reads."""
        if not has_quorum(self.conf.voters, self._reads[ctx].acks):
            return False
        while self._reads:
            key = next(iter(self._reads))
            req = self._reads.pop(key)
            if req.requester == self.node_id:
                self._read_states.append(ReadState(req.index, key))
            else:
                self._send(MT.READ_INDEX_RESP, req.requester, index=req.index, context=key)
            if key == ctx:
                break
        return True

    # ------------------------------------------------------------ transfer

    def _start_transfer(self, to: str) -> None:
        voters = self.conf.voters
        if not to:
            candidates = [p for p in sorted(voters) if p != self.node_id and p in self._prs]
            if not candidates:
                return
            to = max(candidates, key=lambda p: self._prs[p].match)
        if to == self.node_id or to not in voters or to not in self._prs:
            return
        if self._lead_transferee == to:
            return
        self._lead_transferee = to
        self._election_elapsed = 0
        self._flush_due = True  # catch the target up if it lags
        if self._prs[to].match == self._log.last_index:
            self._send(MT.TIMEOUT_NOW, to)

    # ------------------------------------------------------------- follower

    def _handle_append(self, m: Message) -> None:
        log = self._log
        ents = m.entries
        prev = m.index
        prev_term: int | None = m.log_term  # may be log.term_at() below, which is int | None
        for i, e in enumerate(ents):
            if e.index != prev + 1 + i or e.term > m.term:
                return  # malformed
        if prev < log.committed:
            # Everything up to our commit index matches the leader's log
            # (Leader Completeness): skip that part rather than refuse it.
            skip = log.committed - prev
            if skip >= len(ents):
                self._send(MT.APPEND_RESP, m.frm, index=log.committed)
                return
            ents = ents[skip:]
            prev = log.committed
            prev_term = log.term_at(prev)
        if log.term_at(prev) != prev_term:
            self._reject_append(m.frm, prev)
            return
        if prev == 0 and m.snapshot is not None:
            self._maybe_adopt_genesis(m.snapshot)
        last_new = prev + len(ents)
        conflict = log.find_conflict(ents)
        if conflict:
            if conflict <= log.committed:
                return  # would rewrite committed entries: not from a real leader
            new = list(ents[conflict - prev - 1:])
            self._truncate_conf(conflict)
            log.truncate_and_append(new)
            self._scan_conf(new)
        log.commit_to(min(m.commit, last_new))
        self._send(MT.APPEND_RESP, m.frm, index=last_new)

    def _maybe_adopt_genesis(self, meta: SnapshotMeta) -> None:
        """A joining node learns the membership at index 0 from the leader.

        It is reported in Ready.snapshot (index 0, no state-machine data) so
        the driver persists it: after a restart the node must still know the
        founding voters, or its configuration would be wrong.
        """
        log = self._log
        if meta.index != 0 or log.snapshot.index != 0 or self._conf_base.voters \
                or not meta.conf.voters:
            return
        log.snapshot = SnapshotMeta(0, 0, meta.conf)
        self._conf_base = meta.conf
        self._conf_log = []
        self._scan_conf(log.slice(log.first_index, log.last_index + 1))
        self._pending_snapshot = log.snapshot
        self.role = self._follower_role()

    def _reject_append(self, to: str, index: int) -> None:
        log = self._log
        if index > log.last_index:
            hint, hint_term = log.last_index + 1, 0
        else:
            hint_term = log.term_at(index) or 0
            hint = log.first_index_of_term_at(index, log.committed + 1)
        self._send(MT.APPEND_RESP, to, index=index, reject=True,
                   reject_hint=hint, hint_term=hint_term)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        log = self._log
        if snap is None:
            return
        if snap.index <= log.committed:
            self._send(MT.APPEND_RESP, m.frm, index=log.committed)
            return
        if log.term_at(snap.index) == snap.term:
            # We already hold the snapshot's last entry: just commit to it.
            log.commit_to(snap.index)
            self._send(MT.APPEND_RESP, m.frm, index=snap.index)
            return
        log.restore(snap)
        self._conf_base = snap.conf
        self._conf_log = []
        self._pending_snapshot = snap
        self._applied_emitted = max(self._applied_emitted, snap.index)
        self.role = self._follower_role()
        self._send(MT.APPEND_RESP, m.frm, index=snap.index)

    # ------------------------------------------------------------- membership

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_base
        for i, c in self._conf_log:
            if i > index:
                break
            conf = c
        return conf

    def _scan_conf(self, entries: Sequence[Entry]) -> None:
        """Apply the CONF_CHANGE entries just appended (config on append)."""
        changed = False
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            try:
                cc = ConfChange.decode(e.data)
            except ValueError:
                continue
            self._conf_log.append((e.index, apply_conf_change(self.conf, cc)))
            changed = True
        if changed:
            self._on_conf_changed()

    def _truncate_conf(self, from_index: int) -> None:
        """Revert configurations whose entries are about to be overwritten."""
        if self._conf_log and self._conf_log[-1][0] >= from_index:
            while self._conf_log and self._conf_log[-1][0] >= from_index:
                self._conf_log.pop()
            self._on_conf_changed()

    def _on_conf_changed(self) -> None:
        conf = self.conf
        if self.role != Role.LEADER:
            if self.role in (Role.FOLLOWER, Role.LEARNER):
                self.role = self._follower_role()
            return
        members = conf.members()
        for peer in members:
            if peer not in self._prs:
                self._prs[peer] = Progress(self._log.last_index + 1, self.config.max_inflight)
        if self._lead_transferee and self._lead_transferee not in conf.voters:
            self._lead_transferee = NONE
        self._maybe_commit()

    # ------------------------------------------------------------------ util

    def _send(self, mtype: MessageType, to: str, **fields: Any) -> None:
        self._msgs.append(Message(mtype, self.node_id, to, term=self.term, **fields))
