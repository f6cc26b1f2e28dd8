"""The fake network: seeded faults, partitions, per-link order."""

from __future__ import annotations

import random

from storg.raft.sim.simnet import NetProfile, SimNetwork
from storg.raft.types import Message, MessageType


def _msg(frm: str, to: str, index: int = 0) -> Message:
    return Message(MessageType.APPEND, frm, to, term=1, index=index)


def _drain(net: SimNetwork, until: int = 10_000) -> list[Message]:
    got = []
    while (env := net.pop_due(until)) is not None:
        got.append(env.msg)
    return got


def test_fifo_links_keep_order_and_non_fifo_reorders():
    fifo = SimNetwork(random.Random(1), NetProfile(max_delay=20))
    for i in range(200):
        fifo.send(0, _msg("a", "b", i))
    assert [m.index for m in _drain(fifo)] == list(range(200))
    loose = SimNetwork(random.Random(1), NetProfile(max_delay=20, fifo=False))
    for i in range(200):
        loose.send(0, _msg("a", "b", i))
    got = [m.index for m in _drain(loose)]
    assert sorted(got) == list(range(200)) and got != list(range(200))


def test_drop_and_duplicate_rates_follow_the_profile():
    net = SimNetwork(random.Random(2), NetProfile(drop=0.2, duplicate=0.1))
    for i in range(2000):
        net.send(0, _msg("a", "b", i))
    got = _drain(net)
    assert 300 < net.dropped < 500
    assert 1700 < len(got) < 1950
    assert len(got) > len({m.index for m in got})  # some arrived twice


def test_partitions_isolation_cuts_and_heal():
    net = SimNetwork(random.Random(3))
    net.partition(["a", "b"], ["c"])
    assert net.reachable("a", "b") and not net.reachable("a", "c")
    assert not net.reachable("c", "d") and net.reachable("d", "e")  # unnamed: one group
    net.heal()
    net.isolate("b")
    assert not net.reachable("a", "b") and net.reachable("a", "c")
    net.heal()
    net.cut("a", "b")
    assert not net.reachable("a", "b") and net.reachable("b", "a")


def test_a_partition_also_kills_messages_in_flight():
    net = SimNetwork(random.Random(4))
    dropped = []
    net.on_drop = lambda env: dropped.append(env.msg)
    net.send(0, _msg("a", "b"))
    net.isolate("b")
    assert _drain(net) == [] and len(dropped) == 1


def test_same_seed_same_schedule():
    def run(seed):
        net = SimNetwork(random.Random(seed), NetProfile(drop=0.1, duplicate=0.1, fifo=False))
        for i in range(100):
            net.send(i, _msg("a", "b", i))
        return [(m.index) for m in _drain(net)]
    assert run(5) == run(5)
    assert run(5) != run(6)
