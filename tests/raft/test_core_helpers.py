"""A tiny in-test network for driving RaftCore instances by hand.

Not the simulator: messages are delivered in order, instantly, unless a link
is cut; "persisting" a Ready is just calling ``advance``.  The core tests
import :class:`Net` and :func:`new_core` from here (pytest's default import
mode puts this folder on ``sys.path``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.types import ConfState, Entry, HardState, Message, MessageType, ReadState, Role, SnapshotMeta

MT = MessageType


def new_core(node_id: str, voters: Iterable[str], *, learners: Iterable[str] = (),
             config: RaftConfig | None = None, seed: int = 0, term: int = 0,
             vote: str = "", entries: Iterable[Entry] = (), commit: int = 0) -> RaftCore:
    """A core of a fresh cluster (or with a given persisted log and hard state)."""
    conf = ConfState(frozenset(voters), frozenset(learners))
    return RaftCore(node_id, config or RaftConfig(), random.Random(seed),
                    hard_state=HardState(term, vote, commit),
                    snapshot=SnapshotMeta(0, 0, conf), entries=list(entries))


def drain(core: RaftCore) -> list[Message]:
    """Handle the core's Ready as a driver would (persist = advance); return messages."""
    msgs: list[Message] = []
    while core.has_ready():
        rd = core.ready()
        core.advance(rd)
        msgs.extend(rd.messages)
    return msgs


def log_of(core: RaftCore) -> list[tuple[int, int]]:
    """(index, term) of every entry in the core's log."""
    return [(e.index, e.term) for e in core.entries(core.first_index, core.last_index + 1)]


class Net:
    """Cores wired together by an instant, ordered network with cuttable links."""

    def __init__(self, ids: Iterable[str], *, learners: Iterable[str] = (),
                 config: RaftConfig | None = None, seed: int = 0) -> None:
        ids = list(ids)
        learners = list(learners)
        self.config = config or RaftConfig()
        self.cores: dict[str, RaftCore] = {}
        for k, nid in enumerate(ids + learners):
            self.cores[nid] = new_core(nid, ids, learners=learners, config=self.config,
                                       seed=seed * 1000 + k)
        self.cut: set[tuple[str, str]] = set()
        self.delivered: list[Message] = []
        self.applied: dict[str, list[Entry]] = {nid: [] for nid in self.cores}
        self.snapshots: dict[str, list[SnapshotMeta]] = {nid: [] for nid in self.cores}
        self.read_states: dict[str, list[ReadState]] = {nid: [] for nid in self.cores}
        self.drop: Callable[[Message], bool] = lambda m: False

    def add(self, core: RaftCore) -> None:
        self.cores[core.node_id] = core
        self.applied.setdefault(core.node_id, [])
        self.snapshots.setdefault(core.node_id, [])
        self.read_states.setdefault(core.node_id, [])

    # -- links ----------------------------------------------------------

    def isolate(self, nid: str) -> None:
        for other in self.cores:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    # -- running ----------------------------------------------------------

    def collect(self, nid: str) -> list[Message]:
        """Handle one node's Readies; return its messages (not delivered)."""
        core = self.cores[nid]
        out: list[Message] = []
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                self.snapshots[nid].append(rd.snapshot)
            self.applied[nid].extend(rd.committed_entries)
            self.read_states[nid].extend(rd.read_states)
            core.advance(rd)
            out.extend(rd.messages)
        return out

    def deliver(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if (m.frm, m.to) in self.cut or m.to not in self.cores or self.drop(m):
                continue
            self.delivered.append(m)
            self.cores[m.to].step(m)

    def pump(self, limit: int = 10_000) -> None:
        """Run until no node has anything left to do."""
        for _ in range(limit):
            msgs: list[Message] = []
            for nid in self.cores:
                msgs.extend(self.collect(nid))
            if not msgs:
                return
            self.deliver(msgs)
        raise AssertionError("network did not quiesce")

    def tick(self, n: int = 1, only: Iterable[str] | None = None) -> None:
        ids = list(only) if only is not None else list(self.cores)
        for _ in range(n):
            for nid in ids:
                self.cores[nid].tick()
            self.pump()

    def heartbeat(self, nid: str) -> None:
        """Tick only the leader ``nid``: its heartbeat tells followers the commit index.

        A leader sends no APPEND just to announce a new commit index;
        followers learn it from the next APPEND or heartbeat.
        """
        self.tick(1, only=[nid])

    def elect(self, nid: str) -> RaftCore:
        self.cores[nid].campaign()
        self.pump()
        assert self.cores[nid].role == Role.LEADER
        return self.cores[nid]

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.cores.values() if c.role == Role.LEADER]
        return max(leaders, key=lambda c: c.term) if leaders else None

    def sent(self, mtype: MessageType, frm: str | None = None) -> list[Message]:
        return [m for m in self.delivered
                if m.type == mtype and (frm is None or m.frm == frm)]


def test_net_elects_and_replicates() -> None:
    net = Net("abc")
    leader = net.elect("a")
    idx = leader.propose(b"x")
    net.pump()
    assert leader.commit_index == idx
    net.heartbeat("a")
    for nid in "abc":
        assert net.cores[nid].commit_index == idx
        assert [e.data for e in net.applied[nid]] == [b"", b"x"]
