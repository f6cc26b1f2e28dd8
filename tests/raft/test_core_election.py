"""Elections, step by step against the paper's rules (Raft 5.1, 5.2, 5.4.1),
pre-vote (dissertation 9.6) and check-quorum with its leader lease (4.2.3)."""

from __future__ import annotations

import random

from test_core_helpers import MT, Net, drain, new_core

from storg.raft.core import RaftConfig, RaftCore
from storg.raft.types import ConfState, Entry, HardState, Message, Role, SnapshotMeta

NO_PV = RaftConfig(pre_vote=False, check_quorum=False)


def vote_req(frm: str, to: str, term: int, index: int = 0, log_term: int = 0,
             pre: bool = False, context: bytes = b"") -> Message:
    return Message(MT.PRE_VOTE if pre else MT.VOTE, frm, to, term=term, index=index,
                   log_term=log_term, context=context)


def answers(core: RaftCore, mtype: MT) -> list[Message]:
    return [m for m in drain(core) if m.type == mtype]


# -- terms -------------------------------------------------------------------

def test_higher_term_turns_leader_into_follower() -> None:
    net = Net("abc", config=NO_PV)
    a = net.elect("a")
    assert a.term == 1
    a.step(Message(MT.APPEND_RESP, "b", "a", term=5))
    assert (a.role, a.term, a.vote, a.leader) == (Role.FOLLOWER, 5, "", "")
    hs = a.ready().hard_state
    assert hs is not None and hs.term == 5 and hs.vote == ""


def test_higher_term_append_sets_leader_and_term() -> None:
    c = new_core("c", "abc", config=NO_PV)
    c.step(Message(MT.APPEND, "a", "c", term=3, index=0, log_term=0, commit=0))
    assert (c.role, c.term, c.leader) == (Role.FOLLOWER, 3, "a")


def test_candidate_steps_down_on_append_of_same_term() -> None:
    c = new_core("c", "abc", config=NO_PV)
    c.campaign()
    assert (c.role, c.term) == (Role.CANDIDATE, 1)
    c.step(Message(MT.APPEND, "a", "c", term=1, index=0, log_term=0))
    assert (c.role, c.leader) == (Role.FOLLOWER, "a")


def test_stale_term_message_is_ignored_but_answered_with_our_term() -> None:
    c = new_core("c", "abc", term=4)
    c.step(Message(MT.APPEND, "a", "c", term=2, index=0, log_term=0,
                   entries=(Entry(2, 1),)))
    assert c.last_index == 0 and c.term == 4 and c.leader == ""
    (resp,) = answers(c, MT.APPEND_RESP)
    assert resp.term == 4  # tells the stale leader to step down


# -- votes -------------------------------------------------------------------

def test_one_vote_per_term() -> None:
    c = new_core("c", "abc", config=NO_PV)
    c.step(vote_req("a", "c", 1))
    (r,) = answers(c, MT.VOTE_RESP)
    assert not r.reject and c.vote == "a"
    assert c.ready().hard_state is None  # the vote went out with the last Ready
    c.step(vote_req("b", "c", 1))
    (r,) = answers(c, MT.VOTE_RESP)
    assert r.reject and c.vote == "a"
    c.step(vote_req("a", "c", 1))  # a duplicate request gets the same answer
    (r,) = answers(c, MT.VOTE_RESP)
    assert not r.reject


def test_vote_is_persisted_before_the_grant_is_sent() -> None:
    c = new_core("c", "abc", config=NO_PV)
    c.step(vote_req("a", "c", 1))
    rd = c.ready()
    assert rd.hard_state == HardState(1, "a", 0)
    assert [m.type for m in rd.messages] == [MT.VOTE_RESP]


def test_up_to_date_check_by_last_term() -> None:
    ents = [Entry(1, 1), Entry(1, 2), Entry(1, 3)]
    c = new_core("c", "abc", config=NO_PV, term=2, entries=ents)
    # A shorter log with a higher last term is more up to date.
    c.step(vote_req("a", "c", 3, index=2, log_term=2))
    (r,) = answers(c, MT.VOTE_RESP)
    assert not r.reject
    # A longer log with a lower last term is not.
    c2 = new_core("c", "abc", config=NO_PV, term=2, entries=[Entry(1, 1), Entry(2, 2)])
    c2.step(vote_req("a", "c", 3, index=5, log_term=1))
    (r,) = answers(c2, MT.VOTE_RESP)
    assert r.reject and c2.term == 3 and c2.vote == ""


def test_up_to_date_check_by_index_when_last_terms_are_equal() -> None:
    ents = [Entry(1, 1), Entry(1, 2), Entry(1, 3)]
    c = new_core("c", "abc", config=NO_PV, term=1, entries=ents)
    c.step(vote_req("a", "c", 2, index=2, log_term=1))
    (r,) = answers(c, MT.VOTE_RESP)
    assert r.reject
    c.step(vote_req("b", "c", 3, index=3, log_term=1))
    (r,) = answers(c, MT.VOTE_RESP)
    assert not r.reject and c.vote == "b"


def test_follower_that_knows_a_leader_does_not_vote_in_that_term() -> None:
    c = new_core("c", "abc", config=NO_PV)
    c.step(Message(MT.HEARTBEAT, "a", "c", term=1))
    drain(c)
    c.step(vote_req("b", "c", 1))
    (r,) = answers(c, MT.VOTE_RESP)
    assert r.reject


def test_initial_election_and_noop() -> None:
    net = Net("abcde")
    a = net.elect("a")
    assert a.term == 1
    assert all(c.leader == "a" and c.term == 1 for c in net.cores.values())
    # The leader appended an empty NORMAL entry when it took office; it commits,
    # and the followers learn so from the next heartbeat.
    assert a.commit_index == 1 and not net.applied["b"]
    net.heartbeat("a")
    assert [(e.index, e.term, e.data) for e in net.applied["b"]] == [(1, 1, b"")]


def test_single_voter_bootstraps_and_commits_after_persisting() -> None:
    a = new_core("a", "a")
    a.campaign()
    assert a.role == Role.LEADER and a.term == 1
    rd = a.ready()
    assert [e.index for e in rd.entries] == [1] and rd.committed_entries == []
    assert a.commit_index == 0  # its own log counts only once persisted
    a.advance(rd)
    assert a.commit_index == 1
    assert [e.index for e in a.ready().committed_entries] == [1]


def test_election_timeout_is_randomized_within_range() -> None:
    cfg = RaftConfig(election_ticks=10, pre_vote=False, check_quorum=False)
    seen = set()
    for seed in range(40):
        c = RaftCore("a", cfg, random.Random(seed),
                     snapshot=SnapshotMeta(0, 0, ConfState(frozenset("abc"))))
        n = 0
        while c.role == Role.FOLLOWER:
            c.tick()
            n += 1
        assert 10 <= n < 20
        seen.add(n)
    assert len(seen) > 3


def test_split_vote_loses_then_retries() -> None:
    net = Net("abc", config=NO_PV)
    net.cores["a"].campaign()
    net.cores["b"].campaign()
    net.cores["c"].campaign()
    net.pump()
    assert net.leader() is None
    assert all(c.role in (Role.CANDIDATE, Role.FOLLOWER) for c in net.cores.values())
    for _ in range(100):
        net.tick()
        if net.leader() is not None:
            break
    assert net.leader() is not None


def test_no_leader_without_a_majority() -> None:
    net = Net("abcde", seed=3)
    net.isolate("a")
    net.isolate("b")
    net.isolate("c")
    net.tick(100)
    assert net.leader() is None


def test_reelection_after_leader_loss() -> None:
    net = Net("abc")
    net.elect("a")
    net.isolate("a")
    net.tick(30, only="bc")
    new = net.leader()
    assert new is not None and new.node_id in "bc" and new.term >= 2


# -- pre-vote ------------------------------------------------------------------

def test_pre_vote_does_not_bump_terms_of_an_isolated_node() -> None:
    net = Net("abc")
    net.elect("a")
    net.isolate("c")
    net.tick(100, only="c")
    c = net.cores["c"]
    assert c.term == 1 and c.role == Role.PRE_CANDIDATE
    net.heal()
    net.tick(3)
    assert net.cores["a"].role == Role.LEADER and net.cores["a"].term == 1
    assert c.role == Role.FOLLOWER and c.leader == "a"


def test_pre_candidate_sends_next_term_without_changing_its_own() -> None:
    c = new_core("c", "abc")
    c.campaign()
    assert (c.role, c.term, c.vote) == (Role.PRE_CANDIDATE, 0, "")
    msgs = drain(c)
    assert {(m.type, m.term, m.to) for m in msgs} == {(MT.PRE_VOTE, 1, "a"), (MT.PRE_VOTE, 1, "b")}
    c.step(Message(MT.PRE_VOTE_RESP, "a", "c", term=1))
    assert (c.role, c.term, c.vote) == (Role.CANDIDATE, 1, "c")
    assert {m.type for m in drain(c)} == {MT.VOTE}


def test_pre_vote_granted_without_changing_the_voters_term_or_vote() -> None:
    b = new_core("b", "abc")
    b.step(vote_req("c", "b", 1, pre=True))
    (r,) = answers(b, MT.PRE_VOTE_RESP)
    assert not r.reject and r.term == 1
    assert (b.term, b.vote) == (0, "")


def test_pre_vote_refused_while_a_leader_was_heard_recently() -> None:
    b = new_core("b", "abc")
    b.step(Message(MT.HEARTBEAT, "a", "b", term=1))
    drain(b)
    b.step(vote_req("c", "b", 2, index=0, log_term=0, pre=True))
    assert answers(b, MT.PRE_VOTE_RESP) == []
    for _ in range(10):  # the minimum election timeout without a leader
        b.tick()
    b.step(vote_req("c", "b", 2, pre=True))
    (r,) = answers(b, MT.PRE_VOTE_RESP)
    assert not r.reject


def test_pre_vote_refused_for_a_stale_log() -> None:
    b = new_core("b", "abc", term=1, entries=[Entry(1, 1)])
    b.step(vote_req("c", "b", 2, index=0, log_term=0, pre=True))
    (r,) = answers(b, MT.PRE_VOTE_RESP)
    assert r.reject and b.term == 1


# -- check-quorum and the lease -------------------------------------------------

def test_check_quorum_leader_steps_down_when_isolated() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("a")
    # Followers answered during the first election timeout, so the first
    # check passes; the second finds no majority heard from.
    net.tick(10, only="a")
    assert a.role == Role.LEADER
    net.tick(9, only="a")
    assert a.role == Role.LEADER
    net.tick(1, only="a")
    assert a.role == Role.FOLLOWER and a.term == 1 and a.leader == ""


def test_check_quorum_leader_stays_with_a_majority() -> None:
    net = Net("abc")
    a = net.elect("a")
    net.isolate("c")
    net.tick(50, only="ab")
    assert a.role == Role.LEADER


def test_leader_lease_ignores_higher_term_votes() -> None:
    net = Net("abc", config=RaftConfig(pre_vote=False, check_quorum=True))
    net.elect("a")
    b = net.cores["b"]
    b.step(vote_req("c", "b", 5, index=10, log_term=5))
    assert b.term == 1 and b.vote == "a" and b.leader == "a"
    assert answers(b, MT.VOTE_RESP) == []
    # After the minimum election timeout without the leader, the vote passes.
    net.isolate("a")
    net.tick(10, only="b")
    b.step(vote_req("c", "b", 5, index=10, log_term=5))
    assert b.term == 5 and b.vote == "c"


def test_lease_lets_a_transfer_vote_through() -> None:
    net = Net("abc", config=RaftConfig(pre_vote=False, check_quorum=True))
    net.elect("a")
    b = net.cores["b"]
    b.step(vote_req("c", "b", 2, index=1, log_term=1, context=b"transfer"))
    (r,) = answers(b, MT.VOTE_RESP)
    assert not r.reject and b.term == 2 and b.vote == "c"


def test_node_with_runaway_term_rejoins_through_append_response() -> None:
    # Without pre-vote, an isolated node's term runs ahead; with check-quorum
    # its vote requests are ignored, so it learns of the leader only by the
    # leader learning its term from the APPEND_RESP to a stale APPEND.
    net = Net("abc", config=RaftConfig(pre_vote=False, check_quorum=True))
    net.elect("a")
    net.isolate("c")
    net.tick(40, only="c")
    c = net.cores["c"]
    assert c.term > 3
    net.heal()
    net.tick(60)
    leader = net.leader()
    assert leader is not None and leader.term >= c.term
    assert all(x.leader == leader.node_id for x in net.cores.values())


# -- learners --------------------------------------------------------------------

def test_learner_never_campaigns_and_its_vote_is_not_counted() -> None:
    net = Net("ab", learners="l", config=NO_PV)
    net.elect("a")
    learner = net.cores["l"]
    assert learner.role == Role.LEARNER
    net.isolate("a")
    net.tick(60, only="l")
    assert learner.role == Role.LEARNER and learner.term == 1
    # b campaigns: it asks only voters, and a learner's grant does not count.
    b = net.cores["b"]
    b.campaign()
    assert {m.to for m in drain(b)} == {"a"}
    b.step(Message(MT.VOTE_RESP, "l", "b", term=b.term))
    assert b.role == Role.CANDIDATE
    b.step(Message(MT.VOTE_RESP, "a", "b", term=b.term))
    assert b.role == Role.LEADER
