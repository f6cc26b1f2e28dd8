"""The simulator is not vacuous: cores broken on purpose must be caught.

Each test monkeypatches one Raft rule out of the core and expects the
simulator (random runs or a hand-built scenario) to report a violation; the
same run on the intact core reports none.
"""

from __future__ import annotations

import pytest

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.log import RaftLog
from storg.raft.quorum import committed_index
from storg.raft.sim.invariants import SafetyViolation
from storg.raft.sim.sim import Cluster, run_seed
from storg.raft.types import NONE, MessageType, ReadState, Role

_real_maybe_commit = RaftCore._maybe_commit


def _commit_by_counting_any_term(self: RaftCore) -> None:
    """Broken Figure 8 rule: commit whatever a majority holds, whatever its term."""
    matches = {p: pr.match for p, pr in self._prs.items()}
    idx = committed_index(self.conf.voters, matches)
    if idx > self._log.committed and self._log.term_at(idx) != self.term:
        self._log.commit_to(idx)
    _real_maybe_commit(self)


def _first_violation(seeds, nodes: int, steps: int = 200) -> str | None:
    for seed in seeds:
        result = run_seed(seed, nodes, steps)
        if result.violation:
            return result.violation
    return None


# -- a hand-built Figure 8 --------------------------------------------------


def _force_leader(cl: Cluster, node: str) -> None:
    for _ in range(4):
        cl.campaign(node)
        cl.deliver_all()
        if cl.core(node).role == Role.LEADER:
            return
    raise AssertionError(f"{node} could not win an election")


def _figure8(cl: Cluster) -> None:
    """Paper Figure 8 (a)-(d) on five nodes; S1..S5 are n1..n5."""
    s1, s2, s3, s4, s5 = cl.ids
    # (a) S1 leads; entry X (index 2, S1's term) reaches only S2.
    _force_leader(cl, s1)
    cl.deliver_all()
    cl.partition([s1, s2], [s3, s4, s5])
    x = cl.new_command()
    assert cl.propose(x, on=s1) == 2
    cl.deliver_all()
    # (b) S1 crashes; S5 wins with S3 and S4; its entry 2 reaches nobody.
    cl.crash(s1)
    cl.net.drop_filter = lambda m: m.frm == s5 and m.type == MessageType.APPEND
    _force_leader(cl, s5)
    cl.crash(s5)
    # (c) S1 back, leads again; it gets X to S3 and S4 but its own no-op
    # (index 3) to nobody who could store it: X sits on a majority.
    cl.heal()
    cl.restart(s1)
    cl.net.drop_filter = lambda m: (
        m.frm == s1 and m.type == MessageType.APPEND
        and any(e.index >= 3 for e in m.entries)
        and cl.nodes[m.to].core is not None and cl.core(m.to).last_index >= 2)
    _force_leader(cl, s1)
    assert all(cl.core(i).term_at(2) == cl.core(s1).term_at(2) for i in (s2, s3, s4))
    # (d) S1 crashes; S5 (last term higher) wins and overwrites index 2.
    cl.crash(s1)
    cl.net.drop_filter = None
    cl.restart(s5)
    _force_leader(cl, s5)
    cl.run_ticks(3)
    assert all(x not in cl.commands(i) for i in cl.live())


def _figure8_cluster() -> Cluster:
    cfg = RaftConfig(election_ticks=10, max_msg_bytes=1, pre_vote=False, check_quorum=False)
    return Cluster(5, seed=8, config=cfg)


def test_figure8_on_the_intact_core_overwrites_the_uncommitted_entry():
    cl = _figure8_cluster()
    _figure8(cl)
    s5 = cl.ids[4]
    cl.restart(cl.ids[0])
    assert cl.run_until(lambda: all(cl.core(i).term_at(2) == cl.core(s5).term_at(2)
                                    for i in cl.ids), 50)


def test_figure8_mutation_commits_old_term_entry_and_is_caught(monkeypatch):
    monkeypatch.setattr(RaftCore, "_maybe_commit", _commit_by_counting_any_term)
    cl = _figure8_cluster()
    with pytest.raises(SafetyViolation, match="Leader Completeness|State Machine|committed"):
        _figure8(cl)


# -- two votes in one term -------------------------------------------------


def test_chaos_catches_a_node_that_forgets_its_vote(monkeypatch):
    """The vote is granted but never recorded: a second candidate gets one too."""
    original = RaftCore._handle_vote_request

    def forgetful(self, m):
        original(self, m)
        if m.type == MessageType.VOTE and self.vote == m.frm:
            self.vote = NONE

    monkeypatch.setattr(RaftCore, "_handle_vote_request", forgetful)
    violation = _first_violation(range(60), nodes=5)
    assert violation is not None and "Election Safety" in violation


def test_chaos_catches_votes_that_ignore_the_up_to_date_check(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    assert _first_violation(range(40), nodes=5) is not None


def test_chaos_catches_reads_served_without_a_heartbeat_round(monkeypatch):
    """ReadIndex answered at once: a deposed leader serves a stale read."""
    def hasty(self, ctx, requester):
        if requester == self.node_id:
            self._read_states.append(ReadState(self.commit_index, ctx))
        else:
            self._send(MessageType.READ_INDEX_RESP, requester, index=self.commit_index,
                       context=ctx)

    monkeypatch.setattr(RaftCore, "_leader_read", hasty)
    violation = _first_violation(range(60), nodes=5)
    assert violation is not None and "ReadIndex" in violation


def test_intact_core_passes_the_same_seeds():
    assert _first_violation(range(5), nodes=5) is None
