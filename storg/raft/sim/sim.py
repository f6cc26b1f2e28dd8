"""Deterministic simulator that checks the Raft core: ``python -m storg.raft.sim``.

Many :class:`RaftCore` instances run against one seeded fake network
(:mod:`storg.raft.sim.simnet`); a chaos schedule crashes and restarts nodes,
partitions and heals, compacts logs, changes membership, transfers
leadership and proposes unique commands, while :mod:`storg.raft.sim.invariants`
checks Raft's safety properties at every step.  When the faults stop the run
must converge: a leader within a bounded number of ticks, and every command
acknowledged as committed applied on every member.

The driver here follows the Ready contract literally (persist, send, apply,
advance), with a per-node durable store that survives crashes and a state
machine that does not, so what the core relies on being durable is exactly
what it gets back after a restart.  A failing seed prints a short trace; the
seed alone replays it.

The :class:`Cluster` building blocks (tick, deliver, crash, partition ...)
are also what the scenario tests drive by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import random
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import ProposalRefused
from storg.raft.sim.invariants import SafetyChecker, SafetyViolation
from storg.raft.sim.simnet import RELIABLE, Envelope, NetProfile, SimNetwork
from storg.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Role,
    SnapshotMeta,
)

TICK = 10
"""Network time units per Raft tick: a round trip takes well under a tick."""

GENESIS = b"\0" * 16
DEFAULT_STEPS = 300
LEADER_BOUND_TICKS = 150
"""After the faults stop a leader must appear within this many ticks."""
CONVERGE_BOUND_TICKS = 200
"""... and every member must then apply everything within this many more."""


def entry_digest(prev: bytes, entry: Entry) -> bytes:
    """Chain the state machine's digest over one applied entry."""
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(b"%d/%d/%d/" % (entry.index, entry.term, entry.type))
    h.update(entry.data)
    return h.digest()


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """A copy of a state machine: what travels beside a SNAPSHOT message."""

    applied: int
    digest: bytes
    commands: tuple[bytes, ...]


class StateMachine:
    """The simplest replicated state: the list of applied commands.

    The digest chains every applied entry (no-ops and conf changes too), so
    two state machines at one index agree iff they applied the same entries.
    """

    __slots__ = ("applied", "digest", "commands")

    def __init__(self, data: SnapshotData | None = None) -> None:
        if data is None:
            data = SnapshotData(0, GENESIS, ())
        self.applied = data.applied
        self.digest = data.digest
        self.commands = list(data.commands)

    def apply(self, entry: Entry) -> None:
        if entry.type == EntryType.NORMAL and entry.data:
            self.commands.append(entry.data)
        elif entry.type == EntryType.CONF_CHANGE:
            ConfChange.decode(entry.data)
        self.digest = entry_digest(self.digest, entry)
        self.applied = entry.index

    def snapshot(self) -> SnapshotData:
        return SnapshotData(self.applied, self.digest, tuple(self.commands))


class SimStore:
    """One node's durable storage: survives crashes, nothing else does."""

    def __init__(self, snapshot: SnapshotMeta) -> None:
        self.hard_state = HardState()
        self.snapshot = snapshot
        self.snapshot_data = SnapshotData(snapshot.index, GENESIS, ())
        self.entries: list[Entry] = []

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot.index:
            return self.snapshot.term
        off = index - self.snapshot.index - 1
        if 0 <= off < len(self.entries):
            return self.entries[off].term
        return None

    def append(self, node: str, entries: Sequence[Entry], checker: SafetyChecker) -> None:
        """Persist entries, truncating any existing suffix from the first one."""
        first = entries[0].index
        if first <= self.snapshot.index or first > self.last_index() + 1:
            checker.fail(f"{node}: Ready.entries start at {first} but the persisted log "
                         f"covers ({self.snapshot.index}, {self.last_index()}]")
        del self.entries[first - self.snapshot.index - 1:]
        prev_index = first - 1
        prev_term = self.term_at(prev_index)
        assert prev_term is not None  # the range check above: prev_index is in the log or its snapshot
        for e in entries:
            if e.index != prev_index + 1:
                checker.fail(f"{node}: Ready.entries not contiguous at {e.index}")
            if e.term < prev_term:
                checker.fail(f"{node}: entry {e.index} term {e.term} after term {prev_term}")
            checker.on_persist(node, e, prev_term)
            self.entries.append(e)
            prev_index, prev_term = e.index, e.term

    def install(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        """A received snapshot replaces the whole log (core_api: log replaced)."""
        self.snapshot = meta
        self.snapshot_data = data
        self.entries = []

    def compact(self, meta: SnapshotMeta, data: SnapshotData) -> None:
        """The node's own snapshot: drop the log prefix it covers."""
        drop = meta.index - self.snapshot.index
        self.snapshot = meta
        self.snapshot_data = data
        del self.entries[:max(drop, 0)]


class SimNode:
    """A simulated server: durable store, volatile core and state machine."""

    def __init__(self, node_id: str, store: SimStore) -> None:
        self.id = node_id
        self.store = store
        self.core: RaftCore | None = None
        self.sm = StateMachine()
        self.incarnation = 0
        self.pending_snapshots: dict[tuple[int, int], SnapshotData] = {}
        self.proposals: dict[int, bytes] = {}
        self.seen_commit = 0
        self.leader_term = -1

    @property
    def alive(self) -> bool:
        return self.core is not None


def _fmt_msg(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
        s += f" i{m.index} lt{m.log_term}"
    if m.entries:
        s += f" e[{m.entries[0].index}..{m.entries[-1].index}]"
    if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
        s += f" c{m.commit}"
    if m.type in (MessageType.APPEND_RESP, MessageType.READ_INDEX_RESP):
        s += f" i{m.index}"
    if m.reject:
        s += f" REJECT hint{m.reject_hint}/{m.hint_term}"
    if m.snapshot is not None:
        s += f" snap{m.snapshot.index}/{m.snapshot.term}"
    return s


class Cluster:
    """N simulated nodes on one network, plus the safety checker.

    Every method is deterministic given the seed.  Scenario tests use the
    building blocks directly; :func:`run_seed` drives them randomly.
    """

    def __init__(self, n: int = 3, seed: int = 0, config: RaftConfig | None = None,
                 profile: NetProfile = RELIABLE, ids: Sequence[str] | None = None,
                 trace_len: int = 40, voters: Iterable[str] | None = None) -> None:
        self.seed = seed
        self.config = config or RaftConfig()
        self.rng = random.Random(f"sim/{seed}")
        self.net = SimNetwork(random.Random(f"net/{seed}"), dataclasses.replace(profile))
        self.net.on_drop = self._on_drop
        self.ids = list(ids) if ids else [f"n{i}" for i in range(1, n + 1)]
        self.checker = SafetyChecker()
        self.trace: deque[tuple[Any, ...]] = deque(maxlen=trace_len)
        self.now = 0
        self.ticks = 0
        self.acked: dict[bytes, int] = {}
        self.reads: dict[bytes, int] = {}
        self.read_results: dict[bytes, int] = {}
        self.crash_after_persist = 0.0
        self.after_delivery: Callable[[str], None] | None = None
        """Called with the receiver after each delivered message (chaos hooks)."""
        self.stats: Counter[str] = Counter()
        self._cmd_seq = 0
        self._deferred: list[tuple[str, int, str, bool]] = []
        boot = frozenset(self.ids if voters is None else voters)
        initial = SnapshotMeta(0, 0, ConfState(voters=boot))
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.ids:
            # A node outside the initial voters waits to join: empty configuration.
            meta = initial if node_id in boot else SnapshotMeta()
            self.nodes[node_id] = SimNode(node_id, SimStore(meta))
            self._boot(self.nodes[node_id])

    # -- lifecycle -------------------------------------------------------

    def _boot(self, node: SimNode) -> None:
        st = node.store
        node.incarnation += 1
        node.sm = StateMachine(st.snapshot_data)
        node.pending_snapshots = {}
        node.proposals = {}
        node.seen_commit = 0
        node.leader_term = -1
        rng = random.Random(f"core/{self.seed}/{node.id}/{node.incarnation}")
        node.core = RaftCore(node.id, self.config, rng, hard_state=st.hard_state,
                             snapshot=st.snapshot, entries=list(st.entries),
                             applied=st.snapshot.index)
        self.checker.on_restore(node.id, st.snapshot.index, st.snapshot_data.digest)
        self._process(node)

    def crash(self, node_id: str, mid_ready: bool = False) -> None:
        """Kill a node: the core, the state machine and unsent output are gone."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        if not mid_ready:
            self.check_log_mirror(node_id)
        self._event("crash", node_id)
        node.core = None
        node.proposals = {}

    def restart(self, node_id: str) -> None:
        """Start a crashed node again from what its store holds."""
        node = self.nodes[node_id]
        if node.core is not None:
            return
        self._event("restart", node_id)
        self._boot(node)
        self._flush()

    def live(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].core is not None]

    def core(self, node_id: str) -> RaftCore:
        core = self.nodes[node_id].core
        assert core is not None, f"{node_id} is down"
        return core

    # -- network control -------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        sides = [sorted(g) for g in groups]
        self._event("partition", sides)
        self.net.partition(*sides)

    def isolate(self, node_id: str) -> None:
        self._event("isolate", node_id)
        self.net.isolate(node_id)

    def heal(self) -> None:
        self._event("heal")
        self.net.heal()

    # -- time --------------------------------------------------------------

    def deliver_until(self, t: int) -> None:
        """Deliver every message due up to time ``t``, then set the clock to it."""
        while True:
            env = self.net.pop_due(t)
            if env is None:
                break
            self.now = max(self.now, env.deliver_at)
            self._deliver(env)
        self.now = max(self.now, t)

    def deliver_all(self, limit: int = 100_000) -> None:
        """Deliver until nothing is in flight, without ticking anybody."""
        for _ in range(limit):
            t = self.net.next_time()
            if t is None:
                return
            self.deliver_until(t)
        raise RuntimeError("network never went quiet")

    def tick(self, ids: Iterable[str] | None = None) -> None:
        """One tick of wall time: messages in between, then every live node ticks."""
        self.deliver_until(self.now + TICK)
        self.ticks += 1
        for node_id in (ids if ids is not None else self.ids):
            node = self.nodes[node_id]
            if node.core is not None:
                node.core.tick()
                self._process(node)
        self._flush()

    def run_ticks(self, n: int) -> None:
        for _ in range(n):
            self.tick()

    def run_until(self, pred: Callable[[], bool], max_ticks: int) -> bool:
        """Tick until ``pred()`` holds; False if it did not within the bound."""
        for _ in range(max_ticks):
            if pred():
                return True
            self.tick()
        return pred()

    # -- observation ------------------------------------------------------

    def leaders(self) -> list[str]:
        return [i for i in self.live() if self.core(i).role == Role.LEADER]

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        best = None
        for i in self.leaders():
            if best is None or self.core(i).term > self.core(best).term:
                best = i
        return best

    def stable_leader(self) -> str | None:
        """A leader that a majority of its voters (alive) follows in its term."""
        ld = self.leader()
        if ld is None:
            return None
        core = self.core(ld)
        voters = core.conf.voters
        if ld not in voters:
            return None
        following = sum(1 for v in voters if (vc := self.nodes[v].core) is not None
                        and vc.term == core.term
                        and vc.leader == ld)
        return ld if following * 2 > len(voters) else None

    def wait_leader(self, max_ticks: int = LEADER_BOUND_TICKS) -> str | None:
        self.run_until(lambda: self.stable_leader() is not None, max_ticks)
        return self.stable_leader()

    def commands(self, node_id: str) -> list[bytes]:
        return list(self.nodes[node_id].sm.commands)

    # -- client actions ---------------------------------------------------

    def new_command(self) -> bytes:
        self._cmd_seq += 1
        return b"c%d" % self._cmd_seq

    def propose(self, data: bytes | None = None, on: str | None = None) -> int | None:
        """Propose a command on ``on`` (default: the leader); its index or None if refused."""
        on = on or self.leader()
        if on is None or self.nodes[on].core is None:
            return None
        data = data if data is not None else self.new_command()
        node = self.nodes[on]
        try:
            index = self.core(on).propose(data)
        except ProposalRefused as exc:
            self._event("refused", on, data, type(exc).__name__)
            return None
        self._event("propose", on, data, index)
        node.proposals[index] = data
        self._process(node)
        self._flush()
        return index

    def conf_change(self, cc: ConfChange, on: str | None = None) -> int | None:
        on = on or self.leader()
        if on is None or self.nodes[on].core is None:
            return None
        node = self.nodes[on]
        try:
            index = self.core(on).propose_conf_change(cc)
        except ProposalRefused as exc:
            self._event("refused", on, cc, type(exc).__name__)
            return None
        self._event("conf_change", on, cc, index)
        self._process(node)
        self._flush()
        return index

    def transfer(self, to: str = "", on: str | None = None) -> None:
        on = on or self.leader()
        if on is None or self.nodes[on].core is None:
            return
        node = self.nodes[on]
        self._event("transfer", on, to)
        try:
            self.core(on).transfer_leadership(to)
        except ProposalRefused:
            return
        self._process(node)
        self._flush()

    def campaign(self, node_id: str) -> None:
        node = self.nodes[node_id]
        self._event("campaign", node_id)
        self.core(node_id).campaign()
        self._process(node)
        self._flush()

    def read_index(self, on: str | None = None) -> bytes | None:
        """Issue a ReadIndex; the checker requires the answer to cover every commit seen so far."""
        on = on or self.leader()
        if on is None or self.nodes[on].core is None:
            return None
        node = self.nodes[on]
        ctx = b"r%d" % len(self.reads)
        self.reads[ctx] = self.checker.max_committed()
        try:
            self.core(on).read_index(ctx)
        except ProposalRefused:
            return None
        self._event("read_index", on, ctx)
        self._process(node)
        self._flush()
        return ctx

    def compact(self, node_id: str) -> SnapshotMeta | None:
        """Snapshot the node's state machine at its applied index and compact the log.

        None if the node is down or has applied nothing since its last snapshot.
        """
        node = self.nodes[node_id]
        if node.core is None:
            return None
        applied = node.sm.applied
        if applied <= node.store.snapshot.index:
            return None
        meta = node.core.compact(applied)
        self._event("compact", node_id, applied)
        if meta.index != applied:
            self.checker.fail(f"{node_id}: compact({applied}) returned index {meta.index}")
        if meta.term != node.store.term_at(applied):
            self.checker.fail(f"{node_id}: compact({applied}) returned term {meta.term}, "
                              f"the persisted log has {node.store.term_at(applied)}")
        self.checker.on_snapshot_persist(node_id, meta)
        node.store.compact(meta, node.sm.snapshot())
        self._process(node)
        self._flush()
        return meta

    # -- the driver: Ready handling ---------------------------------------

    def _deliver(self, env: Envelope) -> None:
        msg = env.msg
        node = self.nodes.get(msg.to)
        if node is None or node.core is None:
            self._on_drop(env)
            return
        self.trace.append((self.now, "deliver", msg))
        if msg.type == MessageType.SNAPSHOT and msg.snapshot is not None:
            node.pending_snapshots[(msg.snapshot.index, msg.snapshot.term)] = env.attachment
        node.core.step(msg)
        self._process(node)
        if msg.type == MessageType.SNAPSHOT:
            self._deferred.append((msg.frm, env.sender_incarnation, msg.to, True))
        self._flush()
        if self.after_delivery is not None:
            self.after_delivery(node.id)

    def _on_drop(self, env: Envelope) -> None:
        if env.msg.type == MessageType.SNAPSHOT:
            self._deferred.append((env.msg.frm, env.sender_incarnation, env.msg.to, False))

    def _flush(self) -> None:
        """Report finished snapshot streams to their senders (outside any Ready)."""
        while self._deferred:
            frm, inc, to, ok = self._deferred.pop(0)
            node = self.nodes[frm]
            if node.core is None or node.incarnation != inc:
                continue
            self._event("report_snapshot", frm, to, ok)
            node.core.report_snapshot(to, ok)
            self._process(node)

    def _process(self, node: SimNode) -> None:
        """Drain the node's Ready queue in the documented order, checking as we go."""
        core = node.core
        chk = self.checker
        while core is not None and core.has_ready():
            rd = core.ready()
            st = node.store
            # 1. persist: snapshot, entries, hard state
            snap_data = None
            if rd.snapshot is not None and rd.snapshot.index == 0:
                # A joining node adopts the founding membership (carried by the
                # leader's APPEND from index 0): meta only, the log stays.
                if st.snapshot.index != 0 or node.sm.applied != 0:
                    chk.fail(f"{node.id}: genesis snapshot after index {st.snapshot.index}")
                st.snapshot = rd.snapshot
            elif rd.snapshot is not None:
                meta = rd.snapshot
                snap_data = node.pending_snapshots.get((meta.index, meta.term))
                if snap_data is None:
                    chk.fail(f"{node.id}: Ready.snapshot {meta.index}/{meta.term} "
                             f"that never arrived")
                if snap_data.applied != meta.index:
                    chk.fail(f"{node.id}: snapshot meta {meta.index} vs data {snap_data.applied}")
                if meta.index <= node.sm.applied:
                    chk.fail(f"{node.id}: snapshot at {meta.index} would move applied back "
                             f"from {node.sm.applied}")
                chk.on_snapshot_persist(node.id, meta)
                st.install(meta, snap_data)
            if rd.entries:
                st.append(node.id, rd.entries, chk)
            if rd.hard_state is not None:
                chk.on_hard_state(node.id, st.hard_state, rd.hard_state)
                st.hard_state = rd.hard_state
            if st.hard_state.commit > st.last_index():
                chk.fail(f"{node.id}: persisted commit {st.hard_state.commit} beyond the "
                         f"persisted log ({st.last_index()})")
            if self.crash_after_persist and self.rng.random() < self.crash_after_persist:
                self.crash(node.id, mid_ready=True)
                return
            # 2. send
            for m in rd.messages:
                if m.frm != node.id:
                    chk.fail(f"{node.id} sent a message from {m.frm!r}")
                attachment = None
                if m.type == MessageType.SNAPSHOT:
                    if m.snapshot is None or m.snapshot.index != st.snapshot.index:
                        chk.fail(f"{node.id} sent SNAPSHOT {m.snapshot} but holds "
                                 f"{st.snapshot.index}")
                    attachment = st.snapshot_data
                self.net.send(self.now, m, attachment, node.incarnation)
            # 3. apply
            if snap_data is not None:
                node.sm = StateMachine(snap_data)
                chk.on_restore(node.id, snap_data.applied, snap_data.digest)
                self._event("installed", node.id, snap_data.applied)
            for e in rd.committed_entries:
                if e.index != node.sm.applied + 1:
                    chk.fail(f"{node.id} applies {e.index} after {node.sm.applied}")
                if e.index > core.commit_index:
                    chk.fail(f"{node.id} applies {e.index} beyond commit {core.commit_index}")
                node.sm.apply(e)
                if e.type == EntryType.CONF_CHANGE and e.index not in chk.applied_at:
                    self._event("conf_applied", node.id, ConfChange.decode(e.data))
                chk.on_apply(node.id, e, node.sm.digest)
                data = node.proposals.pop(e.index, None)
                if data is not None and data == e.data:
                    self.acked[data] = e.index
            for rs in rd.read_states:
                want = self.reads.get(rs.context)
                if want is not None and rs.index < want:
                    chk.fail(f"{node.id}: ReadIndex {rs.context!r} answered {rs.index}, "
                             f"but {want} was committed before the read was issued")
                self.read_results[rs.context] = rs.index
            # 4. advance
            core.advance(rd)
            self._observe(node)

    def _observe(self, node: SimNode) -> None:
        core = node.core
        assert core is not None  # called from _process, on a live node
        if core.role == Role.LEADER and node.leader_term != core.term:
            node.leader_term = core.term
            self._event("leader", node.id, core.term)
            self.checker.on_leader(node.id, core.term, core.first_index, core.term_at)
        ci = core.commit_index
        if ci > node.seen_commit:
            term = core.term
            for i in range(max(node.seen_commit + 1, core.first_index), ci + 1):
                self.checker.on_commit(node.id, i, core.term_at(i), term)
            node.seen_commit = ci

    def _event(self, kind: str, *args: object) -> None:
        self.trace.append((self.now, kind, *args))
        self.stats[kind] += 1

    def format_trace(self) -> list[str]:
        out = []
        for t, kind, *args in self.trace:
            if kind == "deliver":
                out.append(f"  t={t:>6} deliver {_fmt_msg(args[0])}")
            else:
                out.append(f"  t={t:>6} {kind} " + " ".join(str(a) for a in args))
        return out

    # -- consistency checks beyond the per-event ones ----------------------

    def check_log_mirror(self, node_id: str) -> None:
        """The core's log must equal the persisted log once every Ready is handled."""
        node = self.nodes[node_id]
        core = node.core
        st = node.store
        if core is None:
            return
        if core.last_index != st.last_index() or core.first_index != st.snapshot.index + 1:
            self.checker.fail(f"{node_id}: core log ({core.first_index}..{core.last_index}) "
                              f"differs from persisted ({st.snapshot.index + 1}.."
                              f"{st.last_index()})")
        if core.entries(core.first_index, core.last_index + 1) != st.entries:
            self.checker.fail(f"{node_id}: core log entries differ from the persisted ones")

    def settle(self) -> str:
        """Stop all faults and require convergence; returns the final leader."""
        self._event("settle")
        self.crash_after_persist = 0.0
        self.after_delivery = None
        self.net.profile = dataclasses.replace(RELIABLE)
        self.net.drop_filter = None
        self.net.heal()
        for node_id in self.ids:
            self.restart(node_id)
        ld = self.wait_leader(LEADER_BOUND_TICKS)
        if ld is None:
            self.checker.fail(f"liveness: no stable leader {LEADER_BOUND_TICKS} ticks "
                              f"after the faults stopped")
        markers: list[bytes] = []
        index: int | None = None
        deadline = self.ticks + CONVERGE_BOUND_TICKS
        while True:
            ld = self.stable_leader()
            done = any(m in self.acked for m in markers)
            if done and ld is not None and self._converged(ld):
                break
            if self.ticks >= deadline:
                self.checker.fail(f"liveness: members did not converge within "
                                  f"{CONVERGE_BOUND_TICKS} ticks (marker acked: {done})")
            if not done and ld is not None and (
                    index is None or self.nodes[ld].proposals.get(index) != markers[-1]):
                markers.append(self.new_command())
                index = self.propose(markers[-1], on=ld)
            self.tick()
        members = self.core(ld).conf.members()
        acked = set(self.acked)
        for node_id in sorted(members):
            missing = acked.difference(self.nodes[node_id].sm.commands)
            if missing:
                self.checker.fail(f"{node_id} lacks {len(missing)} acknowledged commands, "
                                  f"e.g. {sorted(missing)[0]!r}")
        for node_id in self.live():
            self.check_log_mirror(node_id)
        return ld

    def _converged(self, ld: str) -> bool:
        target = self.core(ld).commit_index
        for node_id in self.core(ld).conf.members():
            node = self.nodes[node_id]
            if node.core is None or node.sm.applied < target:
                return False
        return True


# -- the chaos schedule ------------------------------------------------------

STORMY = NetProfile(drop=0.1, duplicate=0.05, min_delay=1, max_delay=8,
                    long_delay=0.05, long_delay_max=60, fifo=False)
CALM = NetProfile(drop=0.0, duplicate=0.0, min_delay=1, max_delay=4)


def chaos_config(rng: random.Random) -> RaftConfig:
    """Small limits so batching, windows and byte limits are exercised."""
    return RaftConfig(
        election_ticks=10,
        heartbeat_ticks=rng.choice((1, 1, 2)),
        max_msg_bytes=rng.choice((1, 64, 256, 4096)),
        max_inflight=rng.choice((1, 4, 64)),
        max_uncommitted_bytes=rng.choice((2048, 1 << 20)),
    )


class Chaos:
    """Random faults and client load over a :class:`Cluster`, one tick per step."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cl = cluster
        self.rng = rng
        self.stormy = False
        self.leader_killer = rng.random() < 0.3
        self._judged: dict[str, tuple[int, int]] = {}
        if self.leader_killer:
            cluster.after_delivery = self._maybe_kill_new_leader

    def _maybe_kill_new_leader(self, node_id: str) -> None:
        """Kill leaders at their critical moments, their APPENDs half sent.

        The moment a node wins, and the moment a leader advances its commit
        index, are when an unsafe core would leave a committed entry on too
        few nodes or an old-term entry wrongly counted (paper Figure 8).
        """
        node = self.cl.nodes[node_id]
        if node.core is None or node.core.role != Role.LEADER:
            return
        core, r = node.core, self.rng
        term, commit = self._judged.get(node_id, (-1, -1))
        if term == core.term and commit == core.commit_index:
            return
        self._judged[node_id] = (core.term, core.commit_index)
        if r.random() >= (0.3 if term != core.term else 0.1):
            return
        lost = self.cl.net.discard(lambda m: m.frm == node_id and r.random() < 0.5)
        self.cl._event("lost_in_flight", node_id, lost)
        self.cl.crash(node_id)

    def step(self) -> None:
        cl, r = self.cl, self.rng
        ids = cl.ids
        if r.random() < 0.04:
            self.stormy = not self.stormy
            cl.net.profile = dataclasses.replace(STORMY if self.stormy else CALM)
            cl.crash_after_persist = 0.01 if self.stormy else 0.0
            cl._event("network", "stormy" if self.stormy else "calm")
        live = cl.live()
        down = [i for i in ids if i not in live]
        if live and r.random() < (0.03 if self.stormy else 0.01):
            victim = cl.leader() if r.random() < 0.3 else None
            cl.crash(victim or r.choice(live))
        if self.leader_killer and r.random() < 0.15:
            self.kill_leader_mid_send()
        for node_id in down:
            if r.random() < (0.3 if self.leader_killer else 0.08):
                cl.restart(node_id)
        if r.random() < (0.03 if self.stormy else 0.005):
            shuffled = ids[:]
            r.shuffle(shuffled)
            k = r.randint(1, len(ids) // 2)
            cl.partition(shuffled[:k], shuffled[k:])
        elif r.random() < 0.01:
            cl.isolate(r.choice(ids))
        elif cl.net.groups() and r.random() < (0.03 if self.stormy else 0.15):
            cl.heal()
        if r.random() < 0.6:
            for _ in range(r.randint(1, 3)):
                cl.propose(on=self.pick_target())
        if r.random() < 0.05 and cl.live():
            cl.compact(r.choice(cl.live()))
        if r.random() < 0.02:
            self.membership()
        if r.random() < 0.01:
            ld = cl.leader()
            if ld is not None:
                voters = sorted(cl.core(ld).conf.voters - {ld})
                to = r.choice(voters) if voters and r.random() < 0.5 else ""
                cl.transfer(to, on=ld if r.random() < 0.8 else r.choice(cl.live()))
        if r.random() < 0.05:
            cl.read_index(on=self.pick_target())
        cl.tick()

    def pick_target(self) -> str | None:
        """Mostly the newest leader; sometimes any leader (stale ones in a
        minority too: their entries are what Figure 8 is about); sometimes
        any node (refused with a hint, or forwarded)."""
        r = self.rng
        x = r.random()
        if x < 0.7:
            return None
        leaders = self.cl.leaders()
        if x < 0.9 and leaders:
            return r.choice(leaders)
        live = self.cl.live()
        return r.choice(live) if live else None

    def kill_leader_mid_send(self) -> None:
        """Figure 8 material: a leader dies with only some of its APPENDs out."""
        r = self.rng
        self.cl.deliver_until(self.cl.now + r.randint(0, TICK - 1))
        ld = self.cl.leader()
        if ld is None:
            return
        lost = self.cl.net.discard(lambda m: m.frm == ld and r.random() < 0.5)
        self.cl._event("lost_in_flight", ld, lost)
        self.cl.crash(ld)

    def membership(self) -> None:
        cl, r = self.cl, self.rng
        ld = cl.leader()
        if ld is None:
            return
        conf = cl.core(ld).conf
        learners = sorted(conf.learners)
        voters = sorted(conf.voters)
        outsiders = [i for i in cl.ids if i not in conf.members()]
        min_voters = 2 if len(cl.ids) <= 3 else 3
        if learners and r.random() < 0.6:
            cc = ConfChange(ConfChangeType.ADD_VOTER, r.choice(learners))
        elif outsiders and r.random() < 0.7:
            cc = ConfChange(ConfChangeType.ADD_LEARNER, r.choice(outsiders))
        elif len(voters) > min_voters:
            cc = ConfChange(ConfChangeType.REMOVE, r.choice(voters + learners))
        else:
            return
        cl.conf_change(cc, on=ld)


@dataclass
class SeedResult:
    seed: int
    violation: str | None
    trace: list[str]
    ticks: int = 0
    stats: dict[str, int] = dataclasses.field(default_factory=dict)


def run_seed(seed: int, nodes: int = 5, steps: int = DEFAULT_STEPS,
             core_factory: Callable[..., RaftCore] | None = None) -> SeedResult:
    """One chaotic run plus the convergence check; never raises on a violation."""
    rng = random.Random(f"chaos/{seed}")
    cl = None
    try:
        config = chaos_config(rng)
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        # Some runs start with the last node outside the cluster, waiting to join.
        voters = ids[:-1] if nodes > 3 and rng.random() < 0.3 else ids
        cl = Cluster(nodes, seed, config=config, profile=CALM, ids=ids, voters=voters)
        chaos = Chaos(cl, rng)
        for _ in range(steps):
            chaos.step()
        cl.settle()
    except SafetyViolation as v:
        return _failed(seed, str(v), cl)
    except Exception as exc:  # the core must never raise on these inputs
        return _failed(seed, describe_crash(exc), cl)
    stats = dict(cl.stats)
    stats.update(leaders=cl.checker.leaders_elected, committed=len(cl.checker.committed),
                 acked=len(cl.acked), messages=sum(cl.net.sent.values()))
    return SeedResult(seed, None, [], cl.ticks, stats)


def describe_crash(exc: BaseException) -> str:
    """One line naming an unexpected exception and where in storg it came from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "storg" in f.filename and not f.filename.endswith(("sim.py", "simnet.py"))]
    where = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return (f"core raised {exc!r} at {os.path.basename(where.filename)}:{where.lineno} "
            f"in {where.name}")


def _failed(seed: int, text: str, cl: Cluster | None) -> SeedResult:
    trace = cl.format_trace() if cl is not None else []
    return SeedResult(seed, text, trace, cl.ticks if cl is not None else 0)


def _run_one(args: tuple[int, int, int]) -> SeedResult:
    return run_seed(*args)


def run_seeds(seeds: Sequence[int], nodes: int = 5, steps: int = DEFAULT_STEPS,
              jobs: int = 1) -> list[SeedResult]:
    """Run many seeds, in ``jobs`` processes; results in seed order."""
    work = [(s, nodes, steps) for s in seeds]
    if jobs <= 1 or len(work) < 2:
        return [_run_one(w) for w in work]
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        return pool.map(_run_one, work, chunksize=max(1, len(work) // (jobs * 8)))


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """The CLI; returns the exit status (non-zero on any violation)."""
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="python -m storg.raft.sim",
                                description="Check the Raft core under random faults.")
    p.add_argument("--seeds", type=int, default=100, help="number of seeds to run (0..N-1)")
    p.add_argument("--seed", type=int, default=None, help="replay this one seed")
    p.add_argument("--nodes", type=int, default=5, help="cluster size (3, 5, 7 ...)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="chaos ticks per seed")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: CPU count)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    a = p.parse_args(argv)
    seeds = [a.seed] if a.seed is not None else list(range(a.seeds))
    t0 = time.monotonic()
    results = run_seeds(seeds, a.nodes, a.steps, a.jobs)
    bad = [r for r in results if r.violation]
    if a.verbose:
        total: Counter[str] = Counter()
        for r in results:
            total.update(r.stats)
        print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())), file=out)
    for r in bad:
        print(f"seed {r.seed}: VIOLATION: {r.violation}", file=out)
        print(f"  replay: python -m storg.raft.sim --seed {r.seed} --nodes {a.nodes} "
              f"--steps {a.steps}", file=out)
        print("  last events:", file=out)
        for line in r.trace[-30:]:
            print(line, file=out)
    if a.verbose:
        print(f"{time.monotonic() - t0:.1f}s", file=out)
    print(f"{len(results)} seeds, {len(bad)} violations", file=out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
