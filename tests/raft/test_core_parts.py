"""The core's building blocks on their own: the log's lookups, Progress, quorums."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.raft.log import RaftLog
from storg.raft.progress import Progress, ProgressState
from storg.raft.quorum import VoteResult, apply_conf_change, committed_index, has_quorum, majority, vote_result
from storg.raft.types import ConfChange, ConfChangeType, ConfState, Entry, SnapshotMeta

# Non-decreasing term sequences, as every Raft log is.
term_runs = st.lists(st.integers(1, 4), min_size=0, max_size=30).map(
    lambda steps: [sum(steps[:i + 1]) for i in range(len(steps))])


def make_log(terms: list[int], snap_index: int = 0, snap_term: int = 0) -> RaftLog:
    return RaftLog(SnapshotMeta(snap_index, snap_term),
                   [Entry(t, snap_index + 1 + i) for i, t in enumerate(terms)])


@settings(max_examples=200, deadline=None)
@given(term_runs, st.integers(0, 40), st.integers(0, 40))
def test_last_index_of_term_matches_a_linear_scan(terms: list[int], term: int, upto: int) -> None:
    log = make_log(terms)
    expected = None
    for i in range(0, min(upto, log.last_index) + 1):
        if log.term_at(i) == term:
            expected = i
    assert log.last_index_of_term(term, upto) == expected


@settings(max_examples=200, deadline=None)
@given(term_runs, st.data())
def test_first_index_of_term_matches_a_linear_scan(terms: list[int], data) -> None:
    if not terms:
        return
    log = make_log(terms)
    index = data.draw(st.integers(1, log.last_index))
    floor = data.draw(st.integers(1, index))
    expected = index
    while expected - 1 >= floor and log.term_at(expected - 1) == log.term_at(index):
        expected -= 1
    assert log.first_index_of_term_at(index, floor) == expected


def test_log_term_lookups_around_a_snapshot() -> None:
    log = make_log([5, 5, 6], snap_index=10, snap_term=4)
    assert (log.first_index, log.last_index, log.last_term) == (11, 13, 6)
    assert log.term_at(9) is None and log.term_at(10) == 4 and log.term_at(14) is None
    assert log.last_index_of_term(4, 13) == 10
    assert log.last_index_of_term(3, 13) is None  # compacted away: unknown
    with pytest.raises(ValueError):
        log.slice(10, 12)


def test_log_slice_byte_limit_keeps_at_least_one_entry() -> None:
    log = RaftLog(SnapshotMeta(), [Entry(1, i, data=b"x" * 100) for i in range(1, 5)])
    assert [e.index for e in log.slice(1, 5, max_bytes=10)] == [1]
    assert [e.index for e in log.slice(1, 5, max_bytes=250)] == [1, 2]
    assert [e.index for e in log.slice(1, 5)] == [1, 2, 3, 4]


def test_truncation_pulls_back_the_emitted_and_stable_marks() -> None:
    log = make_log([1, 1, 2, 2])
    assert log.emitted == log.stable == 4
    log.truncate_and_append([Entry(3, 3)])
    assert (log.emitted, log.stable, log.last_index) == (2, 2, 3)
    assert [e.index for e in log.unemitted()] == [3]
    log.stable_to(3, 2)  # an old Ready's entry: replaced since
    assert log.stable == 2
    log.stable_to(3, 3)
    assert log.stable == 3


def test_progress_probe_sends_one_message_until_answered() -> None:
    pr = Progress(next_index=11, max_inflight=4)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(12)
    assert pr.is_paused() and pr.next == 11
    assert not pr.maybe_decr_to(5, 3)  # stale: not the probe we sent
    assert pr.maybe_decr_to(10, 4)
    assert pr.next == 4 and not pr.is_paused()


def test_progress_replicate_window() -> None:
    pr = Progress(next_index=1, max_inflight=2)
    pr.maybe_update(3)
    pr.become_replicate()
    assert pr.next == 4
    pr.sent_entries(5)
    pr.sent_entries(7)
    assert pr.next == 8 and pr.is_paused()
    pr.maybe_update(5)
    pr.free_acked(5)
    assert not pr.is_paused()
    assert not pr.maybe_decr_to(4, 1)  # below match: stale
    assert pr.maybe_decr_to(7, 1)  # a gap above match: probe from match
    assert pr.state == ProgressState.PROBE and pr.next == 6


def test_progress_snapshot_state() -> None:
    pr = Progress(next_index=1, max_inflight=2)
    pr.become_snapshot(50)
    assert pr.is_paused() and not pr.maybe_decr_to(0, 1)
    pr.become_probe()
    assert pr.next == 51


def test_quorum_arithmetic() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    voters = frozenset("abcde")
    assert committed_index(voters, {"a": 9, "b": 7, "c": 5, "d": 3}) == 5
    assert committed_index(voters, {"a": 9, "x": 9, "y": 9}) == 0  # non-voters do not count
    assert has_quorum(voters, "abc") and not has_quorum(voters, "abxy")
    assert vote_result(voters, {"a": True, "b": True}) == VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": True, "c": True}) == VoteResult.WON
    assert vote_result(voters, {"a": True, "b": False, "c": False, "d": False}) == VoteResult.LOST


def test_conf_changes_one_server_at_a_time() -> None:
    conf = ConfState(frozenset("ab"))
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_LEARNER, "c"))
    assert conf == ConfState(frozenset("ab"), frozenset("c"))
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_VOTER, "c"))
    assert conf == ConfState(frozenset("abc"), frozenset())
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.ADD_LEARNER, "a"))  # demote
    assert conf == ConfState(frozenset("bc"), frozenset("a"))
    conf = apply_conf_change(conf, ConfChange(ConfChangeType.REMOVE, "a"))
    assert conf == ConfState(frozenset("bc"), frozenset())
