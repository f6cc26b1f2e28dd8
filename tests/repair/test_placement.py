"""Placement: least used first, distinct holders, rendezvous ties, unreachable nodes last."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from storg.server.files.placement import place


def h(n: int) -> str:
    return hashlib.sha256(b"%d" % n).hexdigest()


def fill(nodes: list[str], chunks: int, copies: int, size=lambda i: 1 << 20,
         usage: Counter | None = None) -> Counter:
    """Place ``chunks`` chunks one after another, as the leader does, counting bytes per node."""
    usage = usage if usage is not None else Counter()
    for i in range(chunks):
        for holder in place(h(i), nodes, copies, dict(usage)):
            usage[holder] += size(i)
    return usage


def test_equal_chunks_spread_within_one_chunk_of_even():
    nodes = [f"n{i}" for i in range(1, 6)]
    usage = fill(nodes, 1000, 3)
    assert set(usage) == set(nodes)
    assert max(usage.values()) - min(usage.values()) <= 1 << 20


def test_mixed_sizes_stay_within_the_largest_chunk_of_even():
    nodes = [f"n{i}" for i in range(1, 8)]
    usage = fill(nodes, 2000, 3, size=lambda i: 4096 + (i * 7919) % (1 << 20))
    assert max(usage.values()) - min(usage.values()) <= 1 << 20


def test_a_new_node_is_filled_first_so_capacity_grows_with_the_cluster():
    old = [f"n{i}" for i in range(1, 5)]
    usage = fill(old, 400, 3)
    everyone = old + ["n5"]
    chosen = Counter(n for i in range(400, 460) for n in place(h(i), everyone, 3, dict(usage)))
    assert chosen["n5"] == 60  # every new chunk gets a copy on the empty node until it catches up


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.sets(st.sampled_from([f"n{i}" for i in range(9)]), min_size=1),
       st.integers(1, 5), st.dictionaries(st.sampled_from([f"n{i}" for i in range(9)]), st.integers(0, 10**9)))
def test_holders_are_distinct_voters_least_used_first_and_deterministic(i, nodes, copies, usage):
    nodes = sorted(nodes)
    chosen = place(h(i), nodes, copies, usage)
    assert len(chosen) == len(set(chosen)) == min(copies, len(nodes))
    assert set(chosen) <= set(nodes)
    left_out = set(nodes) - set(chosen)
    if left_out:
        assert max(usage.get(n, 0) for n in chosen) <= min(usage.get(n, 0) for n in left_out)
    assert place(h(i), list(reversed(nodes)), copies, dict(usage)) == chosen


def test_ties_are_broken_per_chunk_not_always_the_same_node():
    nodes = ["a", "b", "c", "d", "e"]
    firsts = Counter(place(h(i), nodes, 1)[0] for i in range(500))
    assert set(firsts) == set(nodes) and min(firsts.values()) > 50


def test_unreachable_nodes_come_last_but_still_count_when_needed():
    nodes = ["a", "b", "c", "d"]
    assert "d" not in place(h(1), nodes, 3, {"d": 0, "a": 5, "b": 5, "c": 5}, avoid={"d"})
    assert sorted(place(h(1), nodes, 4, {}, avoid={"d"})) == nodes
