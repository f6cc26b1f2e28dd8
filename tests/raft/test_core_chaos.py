"""A small randomized safety check of the core, independent of the simulator.

Five founding voters and one joining node exchange messages over a network
that drops, duplicates, reorders and partitions; nodes crash (losing all
that was not persisted) and restart; logs are compacted; membership changes
and leadership transfers happen.  After every step: at most one leader per
term, no two nodes apply different entries at one index, applied indexes
only grow (per incarnation), and a leader holds every entry committed in an earlier term.
Once the faults stop, a leader appears and everything commits everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import ProposalRefused
from storg.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    Role,
    SnapshotMeta,
)

FOUNDERS = ["n1", "n2", "n3", "n4", "n5"]
JOINER = "n6"
CONFIG = RaftConfig(election_ticks=10, max_msg_bytes=200, max_inflight=4,
                    max_uncommitted_bytes=4000)


@dataclass
class Store:
    """What survives a crash: the Ready contract's persisted state."""

    snapshot: SnapshotMeta
    entries: list[Entry] = field(default_factory=list)
    hard: HardState = HardState()

    def persist(self, snap: SnapshotMeta | None, ents: list[Entry],
                hard: HardState | None) -> None:
        if snap is not None:
            self.snapshot, self.entries = snap, []
        if ents:
            keep = ents[0].index - self.snapshot.index - 1
            self.entries = self.entries[:keep] + list(ents)
        if hard is not None:
            self.hard = hard

    def compact(self, meta: SnapshotMeta) -> None:
        self.entries = [e for e in self.entries if e.index > meta.index]
        self.snapshot = meta


class Chaos:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        genesis = SnapshotMeta(0, 0, ConfState(frozenset(FOUNDERS)))
        self.stores = {nid: Store(genesis) for nid in FOUNDERS}
        self.stores[JOINER] = Store(SnapshotMeta())
        self.cores: dict[str, RaftCore | None] = {}
        self.applied: dict[str, int] = {}
        self.incarnation = 0
        for nid in self.stores:
            self.start(nid)
        self.inflight: list[Message] = []
        self.cut: set[frozenset[str]] = set()
        self.drop_rate = 0.1
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        # index -> the applying node's term when first seen applied: at least
        # the term in which the entry was committed.
        self.seen_in_term: dict[int, int] = {}
        self.seq = 0

    # -- nodes ---------------------------------------------------------------

    def start(self, nid: str) -> None:
        st = self.stores[nid]
        self.incarnation += 1
        self.cores[nid] = RaftCore(nid, CONFIG, random.Random(self.incarnation),
                                   hard_state=st.hard, snapshot=st.snapshot,
                                   entries=list(st.entries), applied=st.snapshot.index)
        self.applied[nid] = st.snapshot.index

    def crash(self, nid: str) -> None:
        self.cores[nid] = None
        for m in self.inflight:
            if m.to == nid:
                self.lost(m)
        self.inflight = [m for m in self.inflight if m.to != nid and m.frm != nid]

    def lost(self, m: Message) -> None:
        """A message is gone; a driver streaming a snapshot reports the failure."""
        src = self.cores.get(m.frm)
        if m.type == MessageType.SNAPSHOT and src is not None:
            src.report_snapshot(m.to, False)

    def process(self, nid: str) -> None:
        core = self.cores[nid]
        while core is not None and core.has_ready():
            rd = core.ready()
            self.stores[nid].persist(rd.snapshot, rd.entries, rd.hard_state)
            self.inflight.extend(rd.messages)
            if rd.snapshot is not None:
                assert rd.snapshot.index >= self.applied[nid]
                if rd.snapshot.index:
                    assert self.committed[rd.snapshot.index][0] == rd.snapshot.term
                self.applied[nid] = rd.snapshot.index
            for e in rd.committed_entries:
                assert e.index == self.applied[nid] + 1, "applied out of order"
                seen = self.committed.setdefault(e.index, (e.term, e.data))
                self.seen_in_term.setdefault(e.index, core.term)
                assert seen == (e.term, e.data), f"state machine safety at {e.index}"
                self.applied[nid] = e.index
            core.advance(rd)
            self.check_leader(core)

    def check_leader(self, core: RaftCore) -> None:
        if core.role != Role.LEADER:
            return
        other = self.leaders.setdefault(core.term, core.node_id)
        assert other == core.node_id, f"two leaders in term {core.term}"
        # Leader Completeness: entries committed in earlier terms are in its log.
        for index, (term, _) in self.committed.items():
            if index > core.snapshot_meta.index and self.seen_in_term[index] < core.term:
                assert core.term_at(index) == term, f"leader {core.node_id} lacks {index}"

    def live(self) -> list[RaftCore]:
        return [c for c in self.cores.values() if c is not None]

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.live() if c.role == Role.LEADER]
        return max(leaders, key=lambda c: c.term) if leaders else None

    # -- network ------------------------------------------------------------------

    def deliver_some(self) -> None:
        rng = self.rng
        rng.shuffle(self.inflight)
        n = rng.randint(0, len(self.inflight))
        batch, self.inflight = self.inflight[:n], self.inflight[n:]
        for m in batch:
            core = self.cores.get(m.to)
            if core is None or frozenset((m.frm, m.to)) in self.cut \
                    or rng.random() < self.drop_rate:
                self.lost(m)
                continue
            if rng.random() < 0.03:
                self.inflight.append(m)  # duplicate later
            core.step(m)
            if m.type == MessageType.SNAPSHOT:
                src = self.cores.get(m.frm)
                if src is not None:
                    src.report_snapshot(m.to, True)

    # -- chaos ----------------------------------------------------------------------

    def step(self) -> None:
        rng = self.rng
        r = rng.random()
        ids = list(self.stores)
        if r < 0.02:
            victim = rng.choice(ids)
            if self.cores[victim] is not None:
                self.crash(victim)
        elif r < 0.06:
            for nid, c in self.cores.items():
                if c is None:
                    self.start(nid)
        elif r < 0.08:
            a = rng.sample(ids, rng.randint(1, 3))
            self.cut = {frozenset((x, y)) for x in a for y in ids if y not in a}
        elif r < 0.11:
            self.cut = set()
        elif r < 0.13:
            self.compact(rng.choice(ids))
        elif r < 0.15:
            self.change_membership()
        elif r < 0.16:
            ld = self.leader()
            if ld is not None:
                ld.transfer_leadership()
        elif r < 0.18:
            ld = self.leader()
            if ld is not None:
                ld.read_index(b"r%d" % self.seq)
                self.seq += 1
        if rng.random() < 0.5:
            self.propose()
        for c in self.live():
            if rng.random() < 0.7:
                c.tick()
        for nid in ids:
            self.process(nid)
        self.deliver_some()
        for nid in ids:
            self.process(nid)

    def propose(self) -> None:
        ld = self.leader()
        if ld is None:
            return
        self.seq += 1
        try:
            ld.propose(b"cmd%d" % self.seq)
        except ProposalRefused:
            pass

    def compact(self, nid: str) -> None:
        core = self.cores[nid]
        if core is None or core.applied_index <= core.snapshot_meta.index:
            return
        index = self.rng.randint(core.snapshot_meta.index + 1, core.applied_index)
        meta = core.compact(index)
        self.stores[nid].compact(meta)

    def change_membership(self) -> None:
        ld = self.leader()
        if ld is None:
            return
        conf = ld.conf
        outsiders = [n for n in self.stores if n not in conf.members()]
        choices = []
        if conf.learners:
            choices.append(ConfChange(ConfChangeType.ADD_VOTER, sorted(conf.learners)[0]))
        if outsiders:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, self.rng.choice(outsiders)))
        if len(conf.voters) > 3:
            choices.append(ConfChange(ConfChangeType.REMOVE,
                                      self.rng.choice(sorted(conf.members()))))
        if choices:
            try:
                ld.propose_conf_change(self.rng.choice(choices))
            except ProposalRefused:
                pass

    def settle(self) -> None:
        """Faults stop: a leader appears and a final command commits everywhere."""
        self.cut = set()
        self.drop_rate = 0.0
        for nid, c in self.cores.items():
            if c is None:
                self.start(nid)
        final: tuple[int, int] | None = None  # (term, index) of the last command
        for _ in range(400):
            for c in self.live():
                c.tick()
            for nid in self.stores:
                self.process(nid)
            while self.inflight:
                self.deliver_some()
                for nid in self.stores:
                    self.process(nid)
            ld = self.leader()
            if ld is None:
                continue
            if final is None or final[0] != ld.term:
                # (Re)propose under each new leader: an earlier one may be lost.
                try:
                    final = (ld.term, ld.propose(b"final"))
                except ProposalRefused:
                    continue
            members = [self.cores[n] for n in ld.conf.members()]
            if all(c.applied_index >= final[1] for c in members if c is not None):
                return
        raise AssertionError("no convergence after the faults stopped")


@pytest.mark.parametrize("seed", range(12))
def test_random_faults_keep_raft_safe(seed: int) -> None:
    chaos = Chaos(seed)
    for _ in range(400):
        chaos.step()
    chaos.settle()
    assert len(chaos.committed) > 20
