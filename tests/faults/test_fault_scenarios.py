"""Jepsen-style scenarios: real nodes, real storgctl clients, a nemesis, a linearizability check.

Each test starts three ``twistd storg`` nodes on their own loopback
addresses, runs concurrent put/get/rm workers on a few keys, injects one
kind of fault (or all of them), heals, and then :func:`fault_harness.verify`
checks convergence, durability of acknowledged puts and linearizability of
the whole history.  Each prints a summary line (``pytest -s``; the
conftest repeats them all at the end of the run).
"""

from __future__ import annotations

import signal

import pytest
from fault_harness import hold

from storg.testing.linearizability import Outcome

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""


def test_leader_killed_in_a_loop(scenario):
    s = scenario()
    wl = s.workers()
    for _ in range(5):
        wl.wait_progress(acked=2)
        leader = s.nemesis.leader()
        s.nemesis.kill(leader)
        s.nemesis.leader()  # the survivors elect a new one
        wl.wait_progress(acked=2)
        s.nemesis.start(leader)
    s.check()


def test_isolated_leader_acknowledges_nothing_and_the_majority_serves(scenario):
    s = scenario(net=True)
    wl = s.workers()
    for round_ in range(2):
        wl.wait_progress(acked=2)
        old = s.nemesis.leader()
        majority = [n for n in s.cluster.nodes if n != old]
        s.nemesis.partition([old], kind="isolate leader")
        cut_at = wl.now()
        # Clients that can reach only the isolated node keep trying through the whole cut.
        pinned = [100 + 10 * round_ + i for i in range(2)]
        stop_pinned = [wl.spawn(p, [old]) for p in pinned]
        new = s.nemesis.leader(majority)
        before = _commit_index(s.cluster, old)
        wl.wait_progress(acked=4)  # the majority serves
        after = _commit_index(s.cluster, old)
        assert after == before, f"isolated {old} advanced its commit index {before} -> {after}"
        healed_at = wl.now()
        s.nemesis.heal_net()
        for ev in stop_pinned:
            ev.set()
        acked = [o.describe() for o in wl.ops if o.process in pinned and o.outcome is Outcome.OK
                 and o.call >= cut_at and o.ret <= healed_at]
        assert not acked, f"the isolated leader {old} answered while cut off (new leader {new}): {acked}"
        wl.wait_progress(acked=2)
    s.check()


def _commit_index(cluster, nid: str) -> int:
    rows = {r["id"]: r for r in cluster.status(nodes=[nid])}
    return rows[nid]["commit_index"]


def test_minority_and_majority_sides(scenario):
    s = scenario(net=True)
    wl = s.workers()
    for round_ in range(4):
        wl.wait_progress(acked=2)
        leader = s.nemesis.leader()
        followers = [n for n in s.cluster.nodes if n != leader]
        # Alternate: the leader alone in the minority, then a follower alone.
        minority = leader if round_ % 2 == 0 else s.rng.choice(followers)
        majority = [n for n in s.cluster.nodes if n != minority]
        s.nemesis.partition([minority], majority, kind="minority/majority split")
        s.nemesis.leader(majority)
        wl.wait_progress(acked=3)
        s.nemesis.heal_net()
    wl.wait_progress(acked=2)
    s.check()


def test_flapping_partitions(scenario):
    s = scenario(net=True)
    wl = s.workers()
    nodes = list(s.cluster.nodes)
    wl.wait_progress(acked=2)
    flaps_until = wl.now() + 20
    while wl.now() < flaps_until:
        shape = s.rng.random()
        if shape < 0.4:
            s.nemesis.partition([s.rng.choice(nodes)], kind="flap")
        elif shape < 0.6:
            a, b = s.rng.sample(nodes, 2)
            s.nemesis.partition([a], [b], kind="flap")  # three islands, no quorum
        elif shape < 0.8:
            a, b = s.rng.sample(nodes, 2)
            s.firewall.cut(a, b)  # a bridge: the third node still sees both
            s.nemesis.faults["flap"] += 1
            s.nemesis.note(f"cut {a}-{b}")
        else:
            s.nemesis.heal_net()
        hold(s.rng.uniform(0.1, 1.2))
    s.nemesis.heal_net()
    wl.wait_progress(acked=3)
    s.check()


def test_pauses_longer_than_the_election_timeout(scenario):
    s = scenario()
    wl = s.workers()
    for round_ in range(4):
        wl.wait_progress(acked=2)
        leader = s.nemesis.leader()
        target = leader if round_ % 2 == 0 else s.rng.choice(
            [n for n in s.cluster.nodes if n != leader])
        others = [n for n in s.cluster.nodes if n != target]
        s.nemesis.pause(target)
        # Paused for longer than the election timeout (at most 600 ms): long enough
        # for the others to (re)establish a leader and serve writes.
        hold(1.0)
        s.nemesis.leader(others)
        wl.wait_progress(acked=2)
        s.nemesis.resume(target)
    wl.wait_progress(acked=2)
    s.check()


def test_every_node_killed_at_once_during_heavy_writes_20_times(scenario):
    s = scenario()
    wl = s.workers(workers=4, mix=(0.75, 0.2, 0.05))
    for _ in range(20):
        wl.wait_progress(acked=1)
        s.nemesis.kill_all()
        for nid in s.cluster.nodes:
            s.nemesis.start(nid)
    wl.wait_progress(acked=2)
    s.check()


MIXED_SECONDS = 30.0


def test_mixed_nemesis(scenario, soak_seconds):
    """Every kind of fault, one after another, for half a minute (``--soak=SECONDS`` for longer).

    Faults are drawn from a shuffled bag of all kinds, refilled when empty,
    and the run goes on past the time until the first bag is used up: every
    kind of fault is injected at least once, whatever the seed.
    """
    s = scenario(net=True)
    wl = s.workers(workers=4)
    n = s.nemesis
    nodes = list(s.cluster.nodes)
    faults = [_kill_leader, _kill_any, _pause_any, _isolate_leader, _split, _flap, _kill_all,
              _stop_leader_cleanly]
    until = wl.now() + (soak_seconds or MIXED_SECONDS)
    wl.wait_progress(acked=2)
    bag: list = []
    injected: set = set()
    while wl.now() < until or len(injected) < len(faults):
        if not bag:
            bag = s.rng.sample(faults, len(faults))
        fault = bag.pop()
        fault(s, n, nodes)
        injected.add(fault)
        n.heal_all()
        wl.wait_progress(acked=2)  # the healed cluster serves again: liveness, every round
    s.check()


def _kill_leader(s, n, nodes):
    leader = n.leader()
    n.kill(leader)
    n.leader([x for x in nodes if x != leader])
    hold(s.rng.uniform(0.5, 3))


def _kill_any(s, n, nodes):
    n.kill(s.rng.choice(nodes))
    hold(s.rng.uniform(0.5, 3))


def _pause_any(s, n, nodes):
    n.pause(s.rng.choice(nodes))
    hold(s.rng.uniform(0.2, 3))


def _isolate_leader(s, n, nodes):
    leader = n.leader()
    n.partition([leader], kind="isolate leader")
    hold(s.rng.uniform(1, 4))


def _split(s, n, nodes):
    minority = s.rng.choice(nodes)
    n.partition([minority], [x for x in nodes if x != minority], kind="minority/majority split")
    hold(s.rng.uniform(1, 4))


def _flap(s, n, nodes):
    for _ in range(s.rng.randrange(3, 10)):
        n.partition([s.rng.choice(nodes)], kind="flap")
        hold(s.rng.uniform(0.1, 0.8))
        n.heal_net()
        hold(s.rng.uniform(0.0, 0.5))


def _kill_all(s, n, nodes):
    n.kill_all()


def _stop_leader_cleanly(s, n, nodes):
    leader = n.leader()
    code = s.cluster.kill(leader, signal.SIGTERM)
    n.down.add(leader)
    n.faults["SIGTERM leader"] += 1
    n.note(f"SIGTERM {leader} (exit {code})")
    assert code == 0, f"SIGTERM of {leader} exited {code}: {s.cluster.log_text(leader)[-2000:]}"
