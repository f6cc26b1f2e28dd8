"""ReadIndex, leadership transfer, membership changes, compaction and snapshots,
and restarting a core from its persisted state."""

from __future__ import annotations

import random

import pytest
from test_core_helpers import MT, Net, drain, log_of, new_core

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import NotLeader, ProposalDropped
from storg.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Role,
    SnapshotMeta,
)

ADD_VOTER, ADD_LEARNER, REMOVE = (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER,
                                  ConfChangeType.REMOVE)


# -- ReadIndex -----------------------------------------------------------------------

def test_read_index_needs_a_heartbeat_round_with_a_majority() -> None:
    net = Net("abcde")
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    commit = a.commit_index
    a.read_index(b"r1")
    msgs = net.collect("a")
    hbs = [m for m in msgs if m.type == MT.HEARTBEAT]
    assert len(hbs) == 4 and all(m.context == b"r1" for m in hbs)
    assert net.read_states["a"] == []
    a.propose(b"later")  # does not change the answer: the commit index at request time
    for m in hbs[:1]:
        net.deliver([m])
        net.deliver(net.collect(m.to))
    net.collect("a")
    assert net.read_states["a"] == []  # two of five is not a majority
    for m in hbs[1:2]:
        net.deliver([m])
        net.deliver(net.collect(m.to))
    net.collect("a")
    assert net.read_states["a"] == [ReadState(commit, b"r1")]


def test_read_index_batches_and_answers_older_requests_too() -> None:
    net = Net("abc")
    a = net.elect("a")
    for k in range(5):
        a.read_index(b"r%d" % k)
    msgs = net.collect("a")
    assert len([m for m in msgs if m.type == MT.HEARTBEAT]) == 2  # one round for all
    net.deliver(msgs)
    net.pump()
    assert [r.context for r in net.read_states["a"]] == [b"r%d" % k for k in range(5)]


def test_read_index_waits_for_the_first_commit_of_the_term() -> None:
    net = Net("abc", config=RaftConfig(pre_vote=False))
    a = net.cores["a"]
    a.campaign()
    net.deliver(net.collect("a"))
    net.deliver(net.collect("b"))
    net.deliver(net.collect("c"))
    assert a.role == Role.LEADER and a.commit_index == 0
    a.read_index(b"early")
    net.pump()
    assert net.read_states["a"] == [ReadState(1, b"early")]


def test_single_voter_answers_reads_at_once() -> None:
    a = new_core("a", "a")
    a.campaign()
    drain(a)
    a.read_index(b"r")
    rd = a.ready()
    assert rd.read_states == [ReadState(1, b"r")] and rd.messages == []


def test_follower_forwards_read_index_to_the_leader() -> None:
    net = Net("abc")
    net.elect("a")
    net.cores["a"].propose(b"x")
    net.pump()
    b = net.cores["b"]
    b.read_index(b"rb")
    net.pump()
    assert net.read_states["b"] == [ReadState(2, b"rb")]
    assert net.sent(MT.READ_INDEX, "b") and net.sent(MT.READ_INDEX_RESP, "a")
    with pytest.raises(NotLeader):
        new_core("z", "xyz").read_index(b"r")


def test_deposed_leader_cannot_answer_reads() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("a")
    a.read_index(b"stale")
    net.tick(30, only="bc")
    net.tick(1, only="a")
    assert net.read_states["a"] == []


# -- leadership transfer ----------------------------------------------------------------

def test_transfer_brings_the_target_up_to_date_then_sends_timeout_now() -> None:
    net = Net("abc")
    a = net.elect("a")
    blocked = True
    net.drop = lambda m: blocked and m.to == "c"
    a.propose(b"x")
    net.pump()
    assert net.cores["c"].last_index == 1
    a.transfer_leadership("c")
    assert not net.sent(MT.TIMEOUT_NOW)
    with pytest.raises(ProposalDropped):
        a.propose(b"refused")
    blocked = False
    net.tick(1)
    assert net.sent(MT.TIMEOUT_NOW, "a")
    c = net.cores["c"]
    assert c.role == Role.LEADER and c.term == 2
    assert a.role == Role.FOLLOWER and a.leader == "c"
    c.propose(b"y")
    net.pump()
    net.heartbeat("c")
    assert a.commit_index == c.last_index


def test_transfer_to_an_up_to_date_target_is_immediate_and_beats_the_lease() -> None:
    net = Net("abc")  # pre-vote and check-quorum on
    a = net.elect("a")
    a.transfer_leadership("b")
    net.pump()
    assert net.cores["b"].role == Role.LEADER and a.role == Role.FOLLOWER


def test_transfer_with_no_target_picks_a_voter() -> None:
    net = Net("abc")
    a = net.elect("a")
    a.transfer_leadership()
    net.pump()
    leader = net.leader()
    assert leader is not None and leader.node_id != "a"


def test_transfer_is_aborted_after_an_election_timeout() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("c")
    net.cut.discard(("a", "b"))
    net.cut.discard(("b", "a"))
    a.propose(b"x")
    net.pump()
    a.transfer_leadership("c")
    with pytest.raises(ProposalDropped):
        a.propose(b"y")
    net.tick(10, only="ab")
    assert a.role == Role.LEADER
    a.propose(b"y")


def test_transfer_request_on_a_follower_is_forwarded() -> None:
    net = Net("abc")
    net.elect("a")
    net.cores["b"].transfer_leadership("b")
    net.pump()
    assert net.cores["b"].role == Role.LEADER


# -- membership ------------------------------------------------------------------------------

def joining(nid: str, seed: int = 7) -> RaftCore:
    """A node that waits to join: empty configuration, empty log."""
    return RaftCore(nid, RaftConfig(), random.Random(seed))


def test_add_learner_then_promote() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.add(joining("d"))
    assert net.cores["d"].role == Role.LEARNER  # not a voter of anything yet
    idx = a.propose_conf_change(ConfChange(ADD_LEARNER, "d", b"addr"))
    assert a.conf.learners == {"d"}  # in force on append
    net.pump()
    d = net.cores["d"]
    assert d.commit_index == idx and d.conf.learners == {"d"} and d.role == Role.LEARNER
    cc_entries = [e for e in net.applied["d"] if e.type == EntryType.CONF_CHANGE]
    assert ConfChange.decode(cc_entries[0].data).context == b"addr"
    a.propose_conf_change(ConfChange(ADD_VOTER, "d"))
    net.pump()
    assert d.role == Role.FOLLOWER and all(c.conf.voters == set("abcd")
                                           for c in net.cores.values())
    net.isolate("a")
    net.tick(40, only="bcd")
    assert net.leader() is not None and net.leader().node_id in "bcd"


def test_joining_node_learns_and_persists_the_founding_membership() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.add(joining("d"))
    a.propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    net.pump()
    genesis = SnapshotMeta(0, 0, ConfState(frozenset("abc")))
    assert net.snapshots["d"] == [genesis]  # for the driver to persist
    a.propose_conf_change(ConfChange(ADD_VOTER, "d"))
    net.pump()
    assert net.cores["d"].conf.voters == set("abcd")
    assert net.cores["d"].snapshot_meta == genesis


def test_joining_node_never_campaigns_on_a_log_replayed_membership() -> None:
    cc = ConfChange(ADD_VOTER, "d").encode()
    d = RaftCore("d", RaftConfig(), random.Random(1), hard_state=HardState(1, "", 1),
                 entries=[Entry(1, 1, EntryType.CONF_CHANGE, cc)])
    assert d.conf.voters == {"d"}  # all it can tell from its log: not the truth
    for _ in range(100):
        d.tick()
    assert d.role == Role.LEARNER and d.term == 1


def test_learner_does_not_count_toward_commit() -> None:
    net = Net("ab", learners="l")
    a = net.elect("a")
    net.isolate("b")
    a.propose(b"x")
    net.pump()
    assert net.cores["l"].last_index == 2
    assert a.commit_index == 1


def test_conf_change_refused_while_another_is_pending() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("a")
    a.propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    with pytest.raises(ProposalDropped):
        a.propose_conf_change(ConfChange(ADD_LEARNER, "e"))
    net.heal()
    net.tick(2)
    a.propose_conf_change(ConfChange(ADD_LEARNER, "e"))


def test_conf_change_refused_before_the_leader_commits_in_its_term() -> None:
    net = Net("abc", config=RaftConfig(pre_vote=False))
    a = net.cores["a"]
    a.campaign()
    net.deliver(net.collect("a"))
    net.deliver(net.collect("b"))
    net.deliver(net.collect("c"))
    assert a.role == Role.LEADER and a.commit_index == 0
    with pytest.raises(ProposalDropped):
        a.propose_conf_change(ConfChange(REMOVE, "c"))
    net.pump()
    a.propose_conf_change(ConfChange(REMOVE, "c"))


def test_conf_change_refused_if_no_voter_would_remain() -> None:
    a = new_core("a", "a")
    a.campaign()
    drain(a)
    with pytest.raises(ProposalDropped):
        a.propose_conf_change(ConfChange(REMOVE, "a"))


def test_leader_removing_itself_steps_down_once_committed() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("a")
    idx = a.propose_conf_change(ConfChange(REMOVE, "a"))
    net.pump()
    assert a.role == Role.LEADER and a.conf.voters == {"b", "c"}
    net.heal()
    net.tick(1)
    assert a.commit_index >= idx and a.role != Role.LEADER
    net.tick(40)
    leader = net.leader()
    assert leader is not None and leader.node_id in "bc"
    assert a.role not in (Role.LEADER, Role.CANDIDATE, Role.PRE_CANDIDATE)


def test_removed_follower_never_campaigns() -> None:
    net = Net("abc")
    a = net.elect("a")
    a.propose_conf_change(ConfChange(REMOVE, "c"))
    net.pump()
    c = net.cores["c"]
    assert "c" not in c.conf.voters and c.role == Role.LEARNER
    net.tick(60, only="c")
    assert c.role == Role.LEARNER and c.term == 1


def test_uncommitted_conf_change_is_reverted_when_truncated() -> None:
    cc = ConfChange(REMOVE, "c").encode()
    log = [Entry(1, 1), Entry(1, 2, EntryType.CONF_CHANGE, cc)]
    b = new_core("b", "abc", term=1, entries=log, commit=1)
    assert b.conf.voters == {"a", "b"}
    b.step(Message(MT.APPEND, "c", "b", term=2, index=1, log_term=1,
                   entries=(Entry(2, 2),), commit=1))
    assert b.conf.voters == {"a", "b", "c"} and log_of(b) == [(1, 1), (2, 2)]


# -- compaction and snapshots --------------------------------------------------------------

def test_compact_returns_meta_with_the_conf_at_that_index() -> None:
    net = Net("abc")
    a = net.elect("a")
    a.propose(b"x")
    net.pump()
    a.propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    net.pump()
    meta = a.compact(2)
    assert (meta.index, meta.term) == (2, 1)
    assert meta.conf == ConfState(frozenset("abc"))
    assert a.first_index == 3 and a.term_at(1) is None and a.term_at(2) == 1
    meta = a.compact(3)
    assert meta.conf.learners == {"d"}
    with pytest.raises(ValueError):
        a.compact(a.applied_index + 1)


def test_lagging_follower_gets_a_snapshot() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("c")
    for k in range(10):
        a.propose(b"x%d" % k)
    net.pump()
    a.compact(a.applied_index)
    net.heal()
    net.tick(1)
    snaps = net.sent(MT.SNAPSHOT, "a")
    assert len(snaps) == 1 and snaps[0].snapshot == a.snapshot_meta
    c = net.cores["c"]
    assert net.snapshots["c"] == [a.snapshot_meta]
    assert c.applied_index == 11 and c.commit_index == 11 and c.first_index == 12
    assert a.progress()["c"].state == "replicate"  # the follower's answer moved it on
    a.report_snapshot("c", True)  # late report: harmless
    a.propose(b"after")
    net.pump()
    net.heartbeat("a")
    assert c.last_index == 12 and net.applied["c"][-1].data == b"after"


def test_snapshot_state_waits_for_the_report() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("c")
    for k in range(3):
        a.propose(b"x%d" % k)
    net.pump()
    a.compact(a.applied_index)
    net.heal()
    net.drop = lambda m: m.type == MT.SNAPSHOT  # streaming the data failed
    net.tick(1)
    assert a.progress()["c"].state == "snapshot"
    net.delivered.clear()
    a.propose(b"more")
    net.pump()
    assert not [m for m in net.sent(MT.APPEND, "a") if m.to == "c" and m.entries]
    a.report_snapshot("c", False)
    assert a.progress()["c"].state == "probe"
    net.drop = lambda m: False
    net.tick(2)
    assert net.cores["c"].commit_index == a.commit_index


def test_snapshot_covered_by_the_followers_log_only_commits() -> None:
    c = new_core("c", "abc", term=1, entries=[Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    meta = SnapshotMeta(2, 1, ConfState(frozenset("abc")))
    c.step(Message(MT.SNAPSHOT, "a", "c", term=1, snapshot=meta))
    rd = c.ready()
    assert rd.snapshot is None and c.commit_index == 2 and c.last_index == 3


# -- restart --------------------------------------------------------------------------------

def test_restart_from_persisted_state() -> None:
    net = Net("abc")
    a = net.elect("a")
    for k in range(3):
        a.propose(b"x%d" % k)
    net.pump()
    net.heartbeat("a")
    meta = a.compact(2)
    b = net.cores["b"]
    persisted = b.entries(b.first_index, b.last_index + 1)
    hs = HardState(b.term, b.vote, b.commit_index)
    b2 = RaftCore("b", RaftConfig(), random.Random(1), hard_state=hs,
                  snapshot=SnapshotMeta(0, 0, ConfState(frozenset("abc"))),
                  entries=persisted, applied=2)
    rd = b2.ready()
    assert rd.hard_state is None and rd.entries == []
    assert [e.index for e in rd.committed_entries] == [3, 4]
    assert b2.role == Role.FOLLOWER and b2.term == 1
    a2 = RaftCore("a", RaftConfig(), random.Random(2), hard_state=HardState(a.term, a.vote, 4),
                  snapshot=meta, entries=a.entries(3, a.last_index + 1))
    assert (a2.first_index, a2.last_index, a2.applied_index) == (3, 4, 2)
    assert [e.index for e in a2.ready().committed_entries] == [3, 4]
