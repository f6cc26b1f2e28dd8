"""MembershipAdmin on real RaftNodes in one reactor: task.Clock time, in-memory log and network."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from storg.config import Address, Member
from storg.fsm.members import MemberDirectory, MembershipStateMachine
from storg.node.raft_node import RaftNode, run_inline
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.errors import NotLeader
from storg.raft.types import ConfState, Role, SnapshotMeta
from storg.server.admin import MembershipAdmin
from storg.server.client_port import RequestError
from storg.testing.memory import MemoryLogStore, MemoryNetwork
from storg.wire import CODEC, ErrorCode, ProbeCommand
from storg.wire.admin import (
    LeaderTransferRequest,
    MemberAddProgress,
    MemberAddRequest,
    MemberChanged,
    MemberListRequest,
    MemberRemoveRequest,
    RemovedNotice,
)

TICK = 0.01


def member(i: int) -> Member:
    return Member(Address("127.0.0.1", 7000 + i), Address("127.0.0.1", 8000 + i))


class FakeConn:
    """What a handler sees of a client connection: frames sent on the side."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.open = True

    def send(self, frame: object) -> None:
        self.sent.append(frame)


class Harness:
    """Founding voters a, b, c; more nodes start empty and wait to be added, like ``join: true``."""

    def __init__(self, founders=("a", "b", "c"), seed: int = 7) -> None:
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.founding = {nid: member(i) for i, nid in enumerate(founders, 1)}
        self.index_of = {nid: i for i, nid in enumerate("abcdefgh", 1)}
        self.seed = seed
        self.nodes: dict[str, RaftNode] = {}
        self.admins: dict[str, MembershipAdmin] = {}
        self.directories: dict[str, MemberDirectory] = {}
        self.stopped: list[str] = []
        for nid in founders:
            self.start(nid)

    def start(self, nid: str) -> RaftNode:
        directory = MemberDirectory(dict(self.founding))
        joining = nid not in self.founding
        snap = SnapshotMeta() if joining else SnapshotMeta(0, 0, ConfState(frozenset(self.founding)))
        core = RaftCore(nid, RaftConfig(election_ticks=10, heartbeat_ticks=2),
                        random.Random(f"{self.seed}-{nid}"), snapshot=snap)
        node = RaftNode(core, MemoryLogStore(), MembershipStateMachine(directory), None,
                        reactor=self.clock, executor=run_inline, tick_seconds=TICK,
                        default_timeout=5.0)
        node._send = self.net.attach(nid, node.step)
        self.nodes[nid] = node
        self.directories[nid] = directory
        self.admins[nid] = MembershipAdmin(node, directory, self.clock,
                                           stop=lambda: self.stopped.append(nid),
                                           connect=self.connect, catch_up_slack=2)
        node.start()
        return node

    async def connect(self, reactor, address: str, timeout: float = 5.0, node: str | None = None):
        """Client connections of the admin (removal notices) go straight to that node's handlers."""
        port = int(address.rsplit(":", 1)[1])
        nid = next(n for n, i in self.index_of.items() if 8000 + i == port)
        if nid not in self.admins or nid in self.net.down:
            raise ConnectionRefusedError(address)
        return _Direct(self.admins[nid])

    def run_until(self, cond, seconds: float = 15.0) -> None:
        for _ in range(int(seconds / TICK)):
            if cond():
                return
            self.clock.advance(TICK)
        assert cond(), "condition not reached in simulated time"

    def leader(self) -> RaftNode:
        self.run_until(lambda: sum(n.role == Role.LEADER for n in self.nodes.values()) == 1)
        self.run_until(lambda: self._leader().core.commit_index >= 1)
        return self._leader()

    def _leader(self) -> RaftNode:
        return next(n for n in self.nodes.values() if n.role == Role.LEADER)

    def call(self, nid: str, request: object, conn: FakeConn | None = None, seconds: float = 30.0):
        """Run a handler to completion; returns its reply or raises its error."""
        handler = self.admins[nid].handlers()[type(request)]
        d = defer.maybeDeferred(handler, request, conn or FakeConn())
        out: list = []
        d.addBoth(out.append)
        self.run_until(lambda: out, seconds)
        if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def write(self, count: int) -> None:
        leader = self.leader()
        pending = [leader.propose(CODEC.encode(ProbeCommand(b"x" * 10))) for _ in range(count)]
        results: list = []
        for d in pending:
            d.addBoth(results.append)
        self.run_until(lambda: len(results) == count)

    def add_request(self, nid: str, learner_only: bool = False) -> MemberAddRequest:
        m = member(self.index_of[nid])
        return MemberAddRequest(1, nid, str(m.peer), str(m.client), learner_only)


class _Direct:
    def __init__(self, admin: MembershipAdmin) -> None:
        self.admin = admin

    def request(self, make):
        frame = make(1)
        return defer.maybeDeferred(self.admin.handlers()[type(frame)], frame, None)

    def close(self) -> None:
        pass


def test_add_waits_for_the_learner_to_catch_up_then_makes_it_a_voter():
    h = Harness()
    h.write(30)
    leader = h.leader()
    h.start("d")
    conn = FakeConn()
    done = h.call(leader.node_id, h.add_request("d"), conn)
    assert done == MemberChanged(1, "d", "voter", done.index)
    assert "d" in leader.core.conf.voters
    progress = [f for f in conn.sent if isinstance(f, MemberAddProgress)]
    assert progress and all(f.node_id == "d" for f in progress)
    assert progress[-1].match + 2 >= progress[-1].last_index
    # Every node, the newcomer included, learned where d listens from the entry.
    h.run_until(lambda: all("d" in d.members() for d in h.directories.values()))
    assert h.directories["a"].members()["d"] == member(4)
    listing = h.call(leader.node_id, MemberListRequest(5))
    assert [(m.id, m.role, m.client) for m in listing.members][-1] == ("d", "voter", "127.0.0.1:8004")


def test_learner_only_stops_at_learner_and_the_same_add_again_promotes():
    h = Harness()
    leader = h.leader()
    h.start("d")
    first = h.call(leader.node_id, h.add_request("d", learner_only=True))
    assert first.role == "learner" and "d" in leader.core.conf.learners
    assert h.nodes["d"].role == Role.LEARNER
    again = h.call(leader.node_id, h.add_request("d"))
    assert again.role == "voter" and "d" in leader.core.conf.voters
    assert h.call(leader.node_id, h.add_request("d")).role == "voter"  # idempotent


def test_add_keeps_waiting_while_the_new_node_is_not_running():
    h = Harness()
    leader = h.leader()
    conn = FakeConn()
    handler = h.admins[leader.node_id].handlers()[MemberAddRequest]
    out: list = []
    handler(h.add_request("d"), conn).addBoth(out.append)
    h.clock.pump([TICK] * 300)
    assert not out and "d" in leader.core.conf.learners
    waiting = [f for f in conn.sent if isinstance(f, MemberAddProgress)]
    assert waiting and waiting[-1].match == 0
    h.start("d")
    h.run_until(lambda: out)
    assert out[0].role == "voter"


@pytest.mark.parametrize("nid, peer, client, why", [
    ("D", "127.0.0.1:7004", "127.0.0.1:8004", "node id"),
    ("d", "nohost", "127.0.0.1:8004", "--peer"),
    ("d", "127.0.0.1:7004", "127.0.0.1:0", "--client"),
    ("d", "127.0.0.1:7001", "127.0.0.1:8004", "already listens"),
    ("b", "127.0.0.1:7009", "127.0.0.1:8009", "already a member"),
])
def test_bad_adds_are_refused_before_anything_is_proposed(nid, peer, client, why):
    h = Harness()
    leader = h.leader()
    last = leader.core.last_index
    with pytest.raises(RequestError) as err:
        h.call(leader.node_id, MemberAddRequest(1, nid, peer, client, False))
    assert err.value.code == ErrorCode.BAD_REQUEST and why in str(err.value)
    assert leader.core.last_index == last


def test_followers_redirect_to_the_leader():
    h = Harness()
    leader = h.leader()
    follower = next(n for n in h.nodes if n != leader.node_id)
    h.run_until(lambda: h.nodes[follower].leader == leader.node_id)
    for request in (MemberListRequest(1), h.add_request("d"), MemberRemoveRequest(1, "a"),
                    LeaderTransferRequest(1, "")):
        with pytest.raises(NotLeader) as err:
            h.call(follower, request)
        assert err.value.leader == leader.node_id


def test_removing_the_leader_hands_over_first_and_the_removed_node_stops():
    h = Harness()
    old = h.leader()
    old_id = old.node_id
    with pytest.raises(NotLeader) as err:
        h.call(old_id, MemberRemoveRequest(1, old_id))
    new_id = err.value.leader
    assert new_id and new_id != old_id and h.nodes[new_id].role == Role.LEADER
    done = h.call(new_id, MemberRemoveRequest(2, old_id))
    assert done.role == "removed" and old_id not in h.nodes[new_id].core.conf.members()
    h.run_until(lambda: h.stopped == [old_id])
    assert old_id not in h.directories[new_id].members()
    # Gone is gone: a second removal is refused as unknown.
    with pytest.raises(RequestError) as unknown:
        h.call(new_id, MemberRemoveRequest(3, old_id))
    assert unknown.value.code == ErrorCode.NOT_FOUND


def test_removing_an_unknown_member_or_the_last_voter_is_refused():
    h = Harness(founders=("a",))
    leader = h.leader()
    with pytest.raises(RequestError) as unknown:
        h.call(leader.node_id, MemberRemoveRequest(1, "zz"))
    assert unknown.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(RequestError) as last:
        h.call(leader.node_id, MemberRemoveRequest(1, "a"))
    assert last.value.code == ErrorCode.BAD_REQUEST


def test_transfer_to_a_chosen_voter_and_refusals():
    h = Harness()
    leader = h.leader()
    target = max(n for n in h.nodes if n != leader.node_id)
    done = h.call(leader.node_id, LeaderTransferRequest(1, target))
    assert done.leader == target and h.nodes[target].role == Role.LEADER
    assert h.call(target, LeaderTransferRequest(2, target)).leader == target
    with pytest.raises(RequestError) as err:
        h.call(target, LeaderTransferRequest(3, "zz"))
    assert err.value.code == ErrorCode.NOT_FOUND
    anyone = h.call(target, LeaderTransferRequest(4, ""))
    assert anyone.leader != target and h.nodes[anyone.leader].role == Role.LEADER


def test_a_notice_older_than_the_nodes_own_readdition_is_refused():
    h = Harness()
    h.leader()
    h.write(3)
    node = h.nodes["b"]
    with pytest.raises(RequestError):
        h.call("b", RemovedNotice(1, "b", "a", 1, node.core.last_index))
    with pytest.raises(RequestError):
        h.call("b", RemovedNotice(1, "c", "a", 1, node.core.last_index + 100))
    assert h.stopped == []
    # A notice past our log is checked with the leader, which still lists b: b stays up.
    h.call("b", RemovedNotice(1, "b", "a", 1, node.core.last_index + 100))
    h.clock.pump([TICK] * 300)
    assert h.stopped == []
