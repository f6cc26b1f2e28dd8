"""The core drops messages from senders outside its configuration (latest or committed).

Regression: a forged APPEND of a higher term from any name made a follower
adopt the term, append and commit arbitrary entries; a forged SNAPSHOT made
it adopt a snapshot whose data it did not have; a READ_INDEX_RESP from
anyone answered its reads.
"""

from __future__ import annotations

import random

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    SnapshotMeta,
)

MT = MessageType
FOUNDERS = ConfState(frozenset({"a", "b", "c"}))


def follower(node_id: str = "b", entries=(), commit: int = 0) -> RaftCore:
    core = RaftCore(node_id, RaftConfig(), random.Random(1), snapshot=SnapshotMeta(0, 0, FOUNDERS),
                    entries=list(entries), hard_state=HardState(1, "", commit))
    core.ready()
    return core


def forged_append(frm: str, term: int = 50) -> Message:
    return Message(MT.APPEND, frm, "b", term=term, index=0, log_term=0,
                   entries=(Entry(term, 1, EntryType.NORMAL, b"evil"),), commit=1)


def test_a_higher_term_append_from_a_stranger_changes_nothing() -> None:
    core = follower()
    core.step(forged_append("mallory"))
    assert core.term == 1 and core.last_index == 0 and core.commit_index == 0
    assert core.leader == ""
    assert not core.ready().messages


def test_the_same_append_from_a_member_is_taken() -> None:
    core = follower()
    core.step(forged_append("a"))  # what the core cannot tell apart: a member's name (the transport's job)
    assert core.term == 50 and core.last_index == 1 and core.commit_index == 1


def test_a_snapshot_a_vote_and_responses_from_a_stranger_are_dropped() -> None:
    core = follower()
    snap = SnapshotMeta(100, 40, ConfState(frozenset({"mallory"})))
    core.step(Message(MT.SNAPSHOT, "mallory", "b", term=50, snapshot=snap))
    core.step(Message(MT.VOTE, "mallory", "b", term=50, index=10, log_term=40))
    core.step(Message(MT.PRE_VOTE, "mallory", "b", term=50, index=10, log_term=40))
    core.step(Message(MT.APPEND_RESP, "mallory", "b", term=60))
    rd = core.ready()
    assert rd.snapshot is None and not rd.messages and rd.hard_state is None
    assert core.term == 1 and core.vote == "" and core.snapshot_meta.index == 0


def test_a_read_index_answer_only_counts_from_the_leader_followed() -> None:
    core = follower()
    core.step(Message(MT.HEARTBEAT, "a", "b", term=1))
    core.ready()
    core.step(Message(MT.READ_INDEX_RESP, "c", "b", term=1, index=1, context=b"r1"))
    assert core.ready().read_states == []
    core.step(Message(MT.READ_INDEX_RESP, "a", "b", term=1, index=1, context=b"r1"))
    assert [rs.context for rs in core.ready().read_states] == [b"r1"]


def test_an_uncommitted_removal_does_not_make_the_node_deaf_to_the_removed_leader() -> None:
    """The liveness case: c won after the leader that appended "REMOVE c" crashed."""
    remove_c = Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE, "c").encode())
    core = follower(entries=[remove_c], commit=0)
    assert "c" not in core.conf.members()
    # c's APPEND of term 2 truncates the uncommitted removal.
    core.step(Message(MT.APPEND, "c", "b", term=2, index=0, log_term=0,
                      entries=(Entry(2, 1, EntryType.NORMAL, b""),), commit=1))
    assert core.term == 2 and core.leader == "c" and core.commit_index == 1
    assert "c" in core.conf.members()


def test_a_committed_removal_drops_the_removed_node() -> None:
    remove_c = Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE, "c").encode())
    core = follower(entries=[remove_c], commit=1)
    core.step(Message(MT.VOTE, "c", "b", term=9, index=5, log_term=5))
    core.step(Message(MT.APPEND, "c", "b", term=9, index=1, log_term=1, commit=1))
    assert core.term == 1 and not core.ready().messages


def test_a_node_waiting_to_join_still_learns_the_membership_from_its_first_append() -> None:
    joiner = RaftCore("d", RaftConfig(), random.Random(1))
    joiner.step(Message(MT.APPEND, "a", "d", term=3, index=0, log_term=0, commit=0,
                        snapshot=SnapshotMeta(0, 0, FOUNDERS)))
    assert joiner.term == 3 and joiner.conf == FOUNDERS
