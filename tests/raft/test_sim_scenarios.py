"""Classroom Raft scenarios, driven by hand through the simulator's building blocks.

Every scenario runs on a :class:`Cluster`, so the safety checker watches
each step; the assertions here are about liveness and message economy,
which the random runs cannot pin down.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from storg.raft.core import RaftConfig
from storg.raft.sim.sim import Cluster
from storg.raft.types import ConfChange, ConfChangeType, MessageType, Role

ELECTION = 10


def _cluster(n: int, seed: int = 1, **cfg) -> Cluster:
    return Cluster(n, seed, config=RaftConfig(election_ticks=ELECTION, **cfg))


def _elect(cl: Cluster) -> str:
    ld = cl.wait_leader(max_ticks=10 * ELECTION)
    assert ld is not None, "no leader elected"
    return ld


def _commit(cl: Cluster, count: int, max_ticks: int = 100) -> list[bytes]:
    """Propose ``count`` commands on the leader and wait until all are acknowledged."""
    cmds = [cl.new_command() for _ in range(count)]
    for c in cmds:
        assert cl.propose(c) is not None
    assert cl.run_until(lambda: all(c in cl.acked for c in cmds), max_ticks), "not committed"
    return cmds


def _applied_everywhere(cl: Cluster, cmds, ids=None) -> bool:
    ids = cl.live() if ids is None else ids
    return all(set(cmds) <= set(cl.commands(i)) for i in ids)


def test_initial_election_then_stable():
    for n in (3, 5, 7):
        cl = _cluster(n)
        ld = _elect(cl)
        cl.run_ticks(2)
        term = cl.core(ld).term
        assert all(cl.core(i).leader == ld and cl.core(i).term == term for i in cl.ids)
        cl.run_ticks(5 * ELECTION)
        assert cl.leaders() == [ld]
        assert cl.core(ld).term == term, "a healthy cluster must not hold new elections"


def test_reelection_after_leader_loss():
    cl = _cluster(3)
    ld1 = _elect(cl)
    cl.isolate(ld1)
    assert cl.run_until(lambda: any(i != ld1 for i in cl.leaders()) and cl.stable_leader(),
                        10 * ELECTION)
    ld2 = cl.stable_leader()
    assert ld2 != ld1
    # The old leader comes back: it must not disrupt the new one.
    cl.heal()
    cl.run_ticks(3 * ELECTION)
    assert cl.stable_leader() == ld2
    assert cl.core(ld1).role == Role.FOLLOWER
    # Lose a majority: no leader; give one back: a leader again.
    others = [i for i in cl.ids if i != ld2]
    cl.partition([ld2], [others[0]], [others[1]])
    cl.run_ticks(4 * ELECTION)
    assert cl.leaders() == []
    cl.partition([ld2, others[0]], [others[1]])
    assert cl.wait_leader(10 * ELECTION) in (ld2, others[0])
    _commit(cl, 3)


def test_no_leader_without_a_majority():
    cl = _cluster(5)
    ld = _elect(cl)
    others = [i for i in cl.ids if i != ld]
    for i in others[:3]:
        cl.crash(i)
    # check-quorum: the leader steps down; nobody can win an election.
    assert cl.run_until(lambda: not cl.leaders(), 3 * ELECTION)
    index = cl.propose(on=ld)
    assert index is None  # NotLeader once it stepped down
    before = cl.core(ld).commit_index
    cl.run_ticks(10 * ELECTION)
    assert cl.leaders() == []
    assert cl.core(ld).commit_index == before
    cl.restart(others[0])
    _elect(cl)
    _commit(cl, 2)


def test_old_leader_rejoins_and_its_uncommitted_entries_are_overwritten():
    cl = _cluster(3)
    ld1 = _elect(cl)
    base = _commit(cl, 2)
    cl.isolate(ld1)
    doomed = [cl.new_command() for _ in range(5)]
    for c in doomed:
        assert cl.propose(c, on=ld1) is not None
    assert cl.run_until(lambda: cl.stable_leader() not in (None, ld1), 10 * ELECTION)
    kept = _commit(cl, 3)
    cl.heal()
    assert cl.run_until(lambda: _applied_everywhere(cl, base + kept), 5 * ELECTION)
    for i in cl.ids:
        assert not set(doomed) & set(cl.commands(i)), f"{i} applied an overwritten entry"
    ld2 = cl.stable_leader()
    assert cl.core(ld1).last_index == cl.core(ld2).last_index
    for i in cl.ids:
        cl.check_log_mirror(i)


def test_fast_backup_over_many_conflicting_entries():
    cl = _cluster(5)
    cl.net.record = []
    ld1 = _elect(cl)
    f1 = next(i for i in cl.ids if i != ld1)
    rest = [i for i in cl.ids if i not in (ld1, f1)]
    _commit(cl, 1)
    # 1. leader + one follower cut off: 50 entries that never commit.
    cl.partition([ld1, f1], rest)
    for _ in range(50):
        cl.propose(on=ld1)
    # 2. the other three elect a leader and commit 50.
    assert cl.run_until(lambda: cl.stable_leader() in rest, 10 * ELECTION)
    ld2 = cl.stable_leader()
    _commit(cl, 50)
    # 3. that leader and one follower cut off: 50 more that never commit.
    x = next(i for i in rest if i != ld2)
    y = next(i for i in rest if i not in (ld2, x))
    cl.partition([ld2, x], [ld1, f1, y])
    for _ in range(50):
        cl.propose(on=ld2)
    # 4. the first pair comes back with y: y's log wins; 50 commit.
    cl.net.record = []
    assert cl.run_until(lambda: cl.stable_leader() in (ld1, f1, y), 10 * ELECTION)
    assert cl.stable_leader() == y
    cmds = _commit(cl, 50)
    rejects = Counter(m.frm for m in cl.net.record
                      if m.type == MessageType.APPEND_RESP and m.reject)
    assert rejects[ld1] <= 3 and rejects[f1] <= 3, rejects
    # 5. everybody together: the second pair also converges quickly.
    cl.net.record = []
    cl.heal()
    more = _commit(cl, 1)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds + more), 5 * ELECTION)
    rejects = Counter(m.frm for m in cl.net.record
                      if m.type == MessageType.APPEND_RESP and m.reject)
    appends = Counter(m.to for m in cl.net.record if m.type == MessageType.APPEND)
    assert rejects[ld2] <= 3 and rejects[x] <= 3, rejects
    assert appends[ld2] < 25 and appends[x] < 25, appends


def test_crash_and_restart_every_node():
    cl = _cluster(3)
    _elect(cl)
    cmds = _commit(cl, 10)
    for i in cl.ids:
        cl.crash(i)
    cl.run_ticks(ELECTION)
    for i in cl.ids:
        cl.restart(i)
    _elect(cl)
    more = _commit(cl, 1)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds + more), 5 * ELECTION)
    # Once more, with a node restarting while the others are down.
    for i in cl.ids:
        cl.crash(i)
    cl.restart(cl.ids[0])
    cl.run_ticks(3 * ELECTION)
    assert cl.leaders() == []
    cl.restart(cl.ids[2])
    _elect(cl)
    cl.restart(cl.ids[1])
    last = _commit(cl, 1)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds + more + last), 5 * ELECTION)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figure8_crash_loop(seed):
    """Leaders crash at random moments after proposing (Figure 8 situations)."""
    cl = _cluster(5, seed=seed)
    rng = random.Random(seed)
    for _ in range(150):
        cl.run_until(lambda: cl.leaders(), 3 * ELECTION)
        for ld in cl.leaders():   # stale leaders too: their entries are the danger
            cl.propose(on=ld)
        if rng.random() < 0.1:
            cl.run_ticks(rng.randint(1, ELECTION))
        else:
            cl.run_ticks(rng.randint(0, 2))
        ld = cl.leader()
        if ld is not None:
            if rng.random() < 0.5:   # it died while sending: some APPENDs never left
                cl.net.discard(lambda m, ld=ld: m.frm == ld and rng.random() < 0.6)
            cl.crash(ld)
        if len(cl.live()) < 3:
            down = [i for i in cl.ids if i not in cl.live()]
            cl.restart(rng.choice(down))
    cl.settle()  # restarts all, requires a leader and every acked command everywhere
    assert cl.checker.leaders_elected >= 15
    assert len(cl.commands(cl.ids[0])) >= 10   # crashed leaders' entries did commit


@pytest.mark.parametrize("seed", [1, 2])
def test_churn(seed):
    """Random crashes, restarts, partitions and proposals on any node."""
    cl = _cluster(5, seed=seed)
    rng = random.Random(seed)
    for _ in range(300):
        r = rng.random()
        live = cl.live()
        if r < 0.03 and live:
            cl.crash(rng.choice(live))
        elif r < 0.1:
            down = [i for i in cl.ids if i not in live]
            if down:
                cl.restart(rng.choice(down))
        elif r < 0.12:
            ids = cl.ids[:]
            rng.shuffle(ids)
            cl.partition(ids[:2], ids[2:])
        elif r < 0.15:
            cl.heal()
        for i in rng.sample(cl.ids, 2):
            if cl.nodes[i].alive:
                cl.propose(on=i)  # refused unless i leads
        cl.tick()
    cl.settle()
    assert len(cl.acked) > 20


def _snapshot_sent_to(cl: Cluster, node: str) -> bool:
    return any(m.type == MessageType.SNAPSHOT and m.to == node for m in cl.net.record)


def test_snapshot_install_to_a_lagging_follower():
    cl = _cluster(3)
    ld = _elect(cl)
    lag = next(i for i in cl.ids if i != ld)
    _commit(cl, 3)
    cl.isolate(lag)
    cmds = _commit(cl, 30)
    for i in cl.ids:
        if i != lag:
            assert cl.compact(i) is not None
    cl.net.record = []
    cl.heal()
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds), 5 * ELECTION)
    assert _snapshot_sent_to(cl, lag)
    assert cl.nodes[lag].store.snapshot.index >= cl.nodes[ld].store.snapshot.index
    assert cl.commands(lag) == cl.commands(ld)
    more = _commit(cl, 2)
    assert cl.run_until(lambda: _applied_everywhere(cl, more), 5 * ELECTION)


def test_snapshot_install_to_a_restarted_follower():
    cl = _cluster(3)
    ld = _elect(cl)
    lag = next(i for i in cl.ids if i != ld)
    _commit(cl, 3)
    cl.crash(lag)
    cmds = _commit(cl, 30)
    for i in cl.ids:
        if i != lag:
            cl.compact(i)
    cl.net.record = []
    cl.restart(lag)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds), 5 * ELECTION)
    assert _snapshot_sent_to(cl, lag)
    # Restart it again: it comes back from its own persisted snapshot.
    snap = cl.nodes[lag].store.snapshot.index
    cl.crash(lag)
    cl.restart(lag)
    assert cl.nodes[lag].sm.applied >= snap
    assert _applied_everywhere(cl, cmds, [lag])
    more = _commit(cl, 2)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds + more), 5 * ELECTION)


def test_prevote_keeps_a_rejoining_node_from_disrupting():
    cl = _cluster(5)
    ld = _elect(cl)
    term = cl.core(ld).term
    f = next(i for i in cl.ids if i != ld)
    cl.isolate(f)
    cl.run_ticks(10 * ELECTION)
    assert cl.core(f).term == term, "pre-vote must keep the isolated node's term"
    cl.heal()
    cl.run_ticks(5 * ELECTION)
    assert cl.stable_leader() == ld
    assert cl.core(ld).term == term
    _commit(cl, 1)


def test_idle_leader_sends_only_heartbeats():
    cl = _cluster(3)
    ld = _elect(cl)
    _commit(cl, 1)
    cl.run_ticks(ELECTION)
    cl.net.record = []
    cl.run_ticks(5 * ELECTION)
    kinds = Counter((m.frm == ld, m.type) for m in cl.net.record)
    assert set(kinds) == {(True, MessageType.HEARTBEAT), (False, MessageType.HEARTBEAT_RESP)}
    assert cl.core(ld).term == cl.core(cl.ids[0]).term


def test_each_entry_goes_once_to_each_follower():
    cl = _cluster(5)
    ld = _elect(cl)
    _commit(cl, 1)
    cl.run_ticks(2)
    cl.net.record = []
    first = cl.core(ld).last_index + 1
    for _ in range(20):           # one at a time ...
        cl.propose()
        cl.deliver_all()
    for _ in range(20):           # ... and in a burst
        cl.propose()
    cl.run_ticks(3)
    last = cl.core(ld).last_index
    assert cl.run_until(lambda: all(cl.nodes[i].sm.applied >= last for i in cl.ids), 20)
    sent = Counter()
    for m in cl.net.record:
        if m.type == MessageType.APPEND:
            for e in m.entries:
                sent[(m.to, e.index)] += 1
    followers = [i for i in cl.ids if i != ld]
    want = {(f, i): 1 for f in followers for i in range(first, last + 1)}
    assert dict(sent) == want


def _conf_change(cl: Cluster, cctype, node: str, max_ticks: int = 50) -> None:
    """Propose a change on the leader (retrying while refused) until applied by the leader."""
    def done() -> bool:
        ld = cl.stable_leader()
        return ld is not None and ld not in pending and cl.core(ld).applied_index >= pending.get("at", 1 << 60)
    pending: dict = {}
    for _ in range(max_ticks):
        ld = cl.stable_leader()
        if ld is not None:
            index = cl.conf_change(ConfChange(cctype, node), on=ld)
            if index is not None:
                pending["at"] = index
                break
        cl.tick()
    assert "at" in pending, f"{cctype.name} {node} never accepted"
    assert cl.run_until(lambda: all(cl.nodes[i].sm.applied >= pending["at"]
                                    for i in cl.live() if cl.nodes[i].store.last_index()
                                    >= pending["at"]) and cl.stable_leader() is not None,
                        max_ticks)


def test_membership_learner_promote_remove_and_readd():
    cl = Cluster(ids=["n1", "n2", "n3", "n4"], voters=["n1", "n2", "n3"], seed=4,
                 config=RaftConfig(election_ticks=ELECTION))
    ld = _elect(cl)
    cmds = _commit(cl, 5)
    assert cl.core("n4").conf.members() == frozenset()
    _conf_change(cl, ConfChangeType.ADD_LEARNER, "n4")
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds, ["n4"]), 5 * ELECTION)
    assert cl.core("n4").role == Role.LEARNER
    _conf_change(cl, ConfChangeType.ADD_VOTER, "n4")
    assert cl.run_until(lambda: cl.core("n4").role == Role.FOLLOWER, 5 * ELECTION)
    # Remove the leader itself: it steps down once the change commits.
    _conf_change(cl, ConfChangeType.REMOVE, ld)
    assert cl.run_until(lambda: cl.stable_leader() not in (None, ld), 10 * ELECTION)
    assert ld not in cl.core(cl.stable_leader()).conf.members()
    more = _commit(cl, 3)
    cl.run_ticks(5 * ELECTION)   # the removed node must not disrupt
    new_ld = cl.stable_leader()
    # And back again, with its old log and hard state.
    _conf_change(cl, ConfChangeType.ADD_LEARNER, ld)
    _conf_change(cl, ConfChangeType.ADD_VOTER, ld)
    last = _commit(cl, 2)
    assert cl.run_until(lambda: _applied_everywhere(cl, cmds + more + last), 5 * ELECTION)
    assert cl.core(new_ld).conf.voters == frozenset(cl.ids)


def test_leadership_transfer_to_a_chosen_voter():
    cl = _cluster(5)
    ld = _elect(cl)
    _commit(cl, 3)
    target = sorted(i for i in cl.ids if i != ld)[-1]
    cl.transfer(target, on=ld)
    assert cl.run_until(lambda: cl.stable_leader() == target, 3 * ELECTION)
    assert cl.core(target).term == cl.core(ld).term
    _commit(cl, 2)
    # Asked on a follower: forwarded to the leader; "" picks the most up-to-date voter.
    follower = next(i for i in cl.ids if i != target)
    cl.transfer("", on=follower)
    assert cl.run_until(lambda: cl.stable_leader() not in (None, target), 3 * ELECTION)
    _commit(cl, 1)
