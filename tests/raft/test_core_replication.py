"""Log replication against the paper's rules (Raft 5.3, 5.4), Figures 7 and 8,
fast backtracking, batching, pipelining, byte limits and message economy."""

from __future__ import annotations

import pytest
from test_core_helpers import MT, Net, drain, log_of, new_core

from storg.raft.core import RaftConfig
from storg.raft.errors import NotLeader, ProposalDropped
from storg.raft.types import Entry, Message, Role

NO_PV = RaftConfig(pre_vote=False, check_quorum=False)


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def append(frm: str, to: str, term: int, prev: int, prev_term: int,
           entries: list[Entry] = (), commit: int = 0) -> Message:
    return Message(MT.APPEND, frm, to, term=term, index=prev, log_term=prev_term,
                   entries=tuple(entries), commit=commit)


def only(msgs: list[Message], mtype: MT) -> Message:
    (m,) = [m for m in msgs if m.type == mtype]
    return m


# -- AppendEntries on the follower -----------------------------------------------

def test_consistency_check_rejects_a_missing_previous_entry() -> None:
    c = new_core("c", "abc", term=1, entries=ents(1, 1))
    c.step(append("a", "c", 1, prev=3, prev_term=1, entries=ents(1, start=4)))
    r = only(drain(c), MT.APPEND_RESP)
    assert r.reject and r.index == 3 and r.reject_hint == 3 and r.hint_term == 0
    assert c.last_index == 2


def test_consistency_check_rejects_a_term_mismatch_with_hint() -> None:
    c = new_core("c", "abc", term=3, entries=ents(1, 2, 2, 2))
    c.step(append("a", "c", 3, prev=4, prev_term=3, entries=ents(3, start=5)))
    r = only(drain(c), MT.APPEND_RESP)
    assert r.reject and r.index == 4 and r.hint_term == 2 and r.reject_hint == 2
    assert log_of(c) == [(1, 1), (2, 2), (3, 2), (4, 2)]


def test_conflicting_suffix_is_truncated_and_replaced() -> None:
    c = new_core("c", "abc", term=2, entries=ents(1, 1, 2, 2))
    c.step(append("a", "c", 3, prev=2, prev_term=1, entries=ents(3, start=3), commit=3))
    rd = c.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3)]
    assert log_of(c) == [(1, 1), (2, 1), (3, 3)]
    assert c.commit_index == 3
    r = only(rd.messages, MT.APPEND_RESP)
    assert not r.reject and r.index == 3


def test_matching_entries_are_not_truncated_by_a_stale_append() -> None:
    c = new_core("c", "abc", term=1, entries=ents(1, 1, 1, 1))
    c.step(append("a", "c", 1, prev=1, prev_term=1, entries=ents(1, start=2)))
    rd = c.ready()
    assert rd.entries == [] and c.last_index == 4
    assert only(rd.messages, MT.APPEND_RESP).index == 2  # only what the message proved


def test_follower_commit_is_capped_by_the_last_new_entry() -> None:
    c = new_core("c", "abc", term=1, entries=ents(1, 1, 1, 1))
    c.step(append("a", "c", 1, prev=1, prev_term=1, entries=ents(1, start=2), commit=4))
    assert c.commit_index == 2


def test_append_below_commit_skips_the_committed_part() -> None:
    c = new_core("c", "abc", term=1, entries=ents(1, 1, 1), commit=3)
    c.step(append("a", "c", 1, prev=1, prev_term=1, entries=ents(1, 1, 1, start=2)))
    r = only(drain(c), MT.APPEND_RESP)
    assert not r.reject and r.index == 4 and c.last_index == 4


# -- Figure 7 ---------------------------------------------------------------------

FIG7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIG7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


def test_figure_7_every_follower_log_converges_to_the_leader() -> None:
    ids = ["l", *FIG7_FOLLOWERS]
    net = Net([], config=NO_PV)
    net.add(new_core("l", ids, config=NO_PV, term=7, entries=ents(*FIG7_LEADER)))
    for k, (nid, terms) in enumerate(FIG7_FOLLOWERS.items()):
        net.add(new_core(nid, ids, config=NO_PV, seed=k, term=max(terms),
                         entries=ents(*terms)))
    leader = net.elect("l")
    assert leader.term == 8
    net.heartbeat("l")
    expected = [(i + 1, t) for i, t in enumerate(FIG7_LEADER)] + [(11, 8)]
    for nid in ids:
        assert log_of(net.cores[nid]) == expected, nid
        assert net.cores[nid].commit_index == 11


# -- Figure 8 -----------------------------------------------------------------------

def test_figure_8_old_term_entry_is_not_committed_by_counting() -> None:
    ids = ["s1", "s2", "s3", "s4", "s5"]
    s1 = new_core("s1", ids, config=NO_PV, term=3, entries=ents(1, 2), commit=1)
    s1.campaign()
    assert s1.term == 4
    s1.step(Message(MT.VOTE_RESP, "s2", "s1", term=4))
    s1.step(Message(MT.VOTE_RESP, "s3", "s1", term=4))
    assert s1.role == Role.LEADER
    drain(s1)  # persists the no-op (3, 4): its own match is now 3
    assert log_of(s1)[-1] == (3, 4)
    # s2 and s3 hold (2, 2): a majority with s1, but of an older term.
    s1.step(Message(MT.APPEND_RESP, "s2", "s1", term=4, index=2))
    s1.step(Message(MT.APPEND_RESP, "s3", "s1", term=4, index=2))
    assert s1.commit_index == 1
    s1.step(Message(MT.APPEND_RESP, "s2", "s1", term=4, index=3))
    assert s1.commit_index == 1
    # Once an entry of term 4 is on a majority, it and everything before commit.
    s1.step(Message(MT.APPEND_RESP, "s3", "s1", term=4, index=3))
    assert s1.commit_index == 3


def test_figure_8_uncommitted_old_entry_may_be_overwritten() -> None:
    # Figure 8 (d): s1 crashed after placing (2, 2) on s2 and s3; s5, holding
    # (2, 3), can win term 5 with s2, s3 and s4 and overwrite index 2 everywhere.
    ids = ["s1", "s2", "s3", "s4", "s5"]
    net = Net([], config=NO_PV)
    net.add(new_core("s2", ids, config=NO_PV, seed=2, term=4, entries=ents(1, 2), commit=1))
    net.add(new_core("s3", ids, config=NO_PV, seed=3, term=4, entries=ents(1, 2), commit=1))
    net.add(new_core("s4", ids, config=NO_PV, seed=4, term=4, entries=ents(1), commit=1))
    net.add(new_core("s5", ids, config=NO_PV, seed=5, term=4, entries=ents(1, 3), commit=1))
    s5 = net.elect("s5")
    assert s5.term == 5
    for nid in ("s2", "s3", "s4", "s5"):
        assert log_of(net.cores[nid]) == [(1, 1), (2, 3), (3, 5)]


# -- fast backtracking ---------------------------------------------------------------

def test_fast_backtracking_skips_a_whole_term_in_one_round_trip() -> None:
    leader_log = ents(1, *[3] * 60)
    follower_log = ents(1, *[2] * 75)
    net = Net([], config=NO_PV)
    net.add(new_core("a", "ab", config=NO_PV, term=3, entries=leader_log))
    net.add(new_core("b", "ab", config=NO_PV, seed=1, term=2, entries=follower_log))
    net.elect("a")
    rejects = [m for m in net.sent(MT.APPEND_RESP, "b") if m.reject]
    assert len(rejects) == 1
    assert (rejects[0].hint_term, rejects[0].reject_hint) == (2, 2)
    assert log_of(net.cores["b"]) == log_of(net.cores["a"])


def test_fast_backtracking_uses_the_leaders_last_entry_of_the_hint_term() -> None:
    leader_log = ents(1, *[2] * 5, *[5] * 30)
    follower_log = ents(1, *[2] * 10, *[4] * 40)
    net = Net([], config=NO_PV)
    net.add(new_core("a", "ab", config=NO_PV, term=5, entries=leader_log))
    net.add(new_core("b", "ab", config=NO_PV, seed=1, term=4, entries=follower_log))
    net.elect("a")
    rejects = [m for m in net.sent(MT.APPEND_RESP, "b") if m.reject]
    # One round trip per conflicting term: term 4, then term 2 (resolved at 6).
    assert [(m.hint_term, m.reject_hint) for m in rejects] == [(4, 12), (2, 2)]
    probes = [m for m in net.sent(MT.APPEND, "a")]
    assert [m.index for m in probes[:3]] == [36, 11, 6]
    assert log_of(net.cores["b"]) == log_of(net.cores["a"])


def test_backtracking_over_a_short_follower_log() -> None:
    net = Net([], config=NO_PV)
    net.add(new_core("a", "ab", config=NO_PV, term=1, entries=ents(*[1] * 70)))
    net.add(new_core("b", "ab", config=NO_PV, seed=1, term=1, entries=ents(1, 1, 1)))
    net.elect("a")
    rejects = [m for m in net.sent(MT.APPEND_RESP, "b") if m.reject]
    assert [(m.hint_term, m.reject_hint) for m in rejects] == [(0, 4)]
    assert log_of(net.cores["b"]) == log_of(net.cores["a"])


# -- leader side --------------------------------------------------------------------

def test_proposals_between_two_readies_go_out_in_one_append() -> None:
    net = Net("abc")
    a = net.elect("a")
    for k in range(10):
        a.propose(b"cmd%d" % k)
    msgs = [m for m in drain(a) if m.type == MT.APPEND]
    assert sorted(m.to for m in msgs) == ["b", "c"]
    assert all(len(m.entries) == 10 for m in msgs)


def test_pipelining_is_bounded_by_the_inflight_window() -> None:
    cfg = RaftConfig(max_inflight=3, max_msg_bytes=1)
    net = Net("ab", config=cfg)
    a = net.elect("a")
    for k in range(5):
        a.propose(b"x%d" % k)
    msgs = [m for m in drain(a) if m.type == MT.APPEND]
    assert [len(m.entries) for m in msgs] == [1, 1, 1]  # window full, no waiting per entry
    assert a.progress()["b"].state == "replicate"
    net.deliver(msgs)
    net.pump()
    assert net.cores["b"].last_index == a.last_index == 6
    entries_to_b = [e.index for m in net.sent(MT.APPEND, "a") for e in m.entries]
    assert entries_to_b == list(range(1, 7))  # each entry sent exactly once


def test_byte_limit_per_message_with_at_least_one_entry() -> None:
    cfg = RaftConfig(max_msg_bytes=200)
    net = Net("ab", config=cfg)
    a = net.elect("a")
    a.propose(b"x" * 100)
    a.propose(b"y" * 50)
    a.propose(b"z" * 500)
    a.propose(b"w")
    msgs = [m for m in drain(a) if m.type == MT.APPEND]
    assert [[len(e.data) for e in m.entries] for m in msgs] == [[100, 50], [500], [1]]


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    net = Net("abc")
    a = net.elect("a")
    idx = a.propose(b"x")
    rd = a.ready()
    assert a.progress()["a"].match == idx - 1
    for m in rd.messages:
        net.cores[m.to].step(m)
    for nid in "bc":  # both followers ack before the leader persisted
        for m in net.collect(nid):
            a.step(m)
    assert a.commit_index == idx  # a majority without the leader
    a.advance(rd)
    assert a.progress()["a"].match == idx


def test_leader_alone_cannot_commit_without_persisting_and_a_majority() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("a")
    idx = a.propose(b"x")
    net.pump()
    assert a.progress()["a"].match == idx and a.commit_index == idx - 1


def test_idle_leader_sends_only_heartbeats() -> None:
    net = Net("abcde")
    net.elect("a")
    net.tick(3)
    net.delivered.clear()
    net.tick(30)
    assert {m.type for m in net.delivered} == {MT.HEARTBEAT, MT.HEARTBEAT_RESP}
    assert len(net.sent(MT.HEARTBEAT)) == 30 * 4


def test_each_entry_goes_once_to_each_follower() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.delivered.clear()
    for k in range(20):
        for _ in range(k % 3 + 1):
            a.propose(b"c%d" % k)
        net.pump()
        if k % 4 == 0:
            net.tick()
    net.heartbeat("a")
    for nid in "bc":
        sent = [e.index for m in net.sent(MT.APPEND, "a") if m.to == nid for e in m.entries]
        assert sent == list(range(2, a.last_index + 1))
        # No APPEND went out only to announce a commit index: every one carried entries.
        assert all(m.entries for m in net.sent(MT.APPEND, "a") if m.to == nid)
    assert all(c.commit_index == a.last_index for c in net.cores.values())


def test_lost_append_is_recovered_by_the_next_append() -> None:
    net = Net("abc")
    a = net.elect("a")
    lost: list[Message] = []
    net.drop = lambda m: (m.type == MT.APPEND and m.to == "c" and bool(m.entries)
                          and not lost and not lost.append(m))
    a.propose(b"x")
    net.pump()
    a.propose(b"y")
    net.pump()
    # The APPEND carrying y does not fit c's log: c's refusal reveals the gap at once.
    assert len(lost) == 1
    assert net.cores["c"].last_index == 3
    net.heartbeat("a")
    assert net.cores["c"].commit_index == 3


def test_lost_append_is_recovered_via_heartbeat() -> None:
    net = Net("abc")
    a = net.elect("a")
    blocked = True
    net.drop = lambda m: blocked and m.type == MT.APPEND and m.to == "c"
    a.propose(b"x")
    a.propose(b"y")
    net.pump()
    blocked = False
    net.pump()
    assert net.cores["c"].last_index == 1 and a.commit_index == 3
    net.tick(1)  # the heartbeat response shows c lags: an APPEND reveals the gap
    assert net.cores["c"].last_index == 3 and net.cores["c"].commit_index == 3
    resent = [e.index for m in net.sent(MT.APPEND, "a") if m.to == "c" for e in m.entries]
    assert resent == [1, 2, 3]  # dropped messages are not in the record


def test_not_leader_carries_a_hint() -> None:
    net = Net("abc")
    net.elect("a")
    with pytest.raises(NotLeader) as exc:
        net.cores["b"].propose(b"x")
    assert exc.value.leader == "a"
    with pytest.raises(NotLeader) as exc:
        new_core("z", "xyz").propose(b"x")
    assert exc.value.leader == ""


def test_uncommitted_tail_is_bounded() -> None:
    net = Net("abc", config=RaftConfig(max_uncommitted_bytes=1000))
    a = net.elect("a")
    net.isolate("a")
    accepted = 0
    with pytest.raises(ProposalDropped):
        for _ in range(100):
            a.propose(b"x" * 100)
            accepted += 1
    assert 5 <= accepted <= 10
    net.pump()
    net.heal()
    net.tick(1)  # heartbeats reveal the gap; everything commits
    assert a.commit_index == a.last_index
    a.propose(b"x" * 100)
