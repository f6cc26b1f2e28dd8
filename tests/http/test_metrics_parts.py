"""The pieces of /metrics and the status view that need no node: names, peer counters, history."""

from __future__ import annotations

from twisted.internet.task import Clock

from storg.raft.types import Message, MessageType, Role, SoftState
from storg.server.http.metrics import operation_name
from storg.server.http.view import ClusterView
from storg.server.peer_stats import MAX_REASONS, PeerStats
from storg.wire import ProbeWrite, StatusRequest
from storg.wire.admin import MemberAddRequest
from storg.wire.files import GetRequest, LsRequest, PutEnd, PutStart, RmRequest


def test_operation_labels_are_short_snake_case_names():
    assert [operation_name(k) for k in (PutEnd, PutStart, GetRequest, LsRequest, RmRequest,
                                         StatusRequest, MemberAddRequest, ProbeWrite)] == \
        ["put", "put_start", "get", "ls", "rm", "status", "member_add", "probe_write"]


def _msg(mtype: MessageType, frm: str, to: str) -> Message:
    return Message(mtype, frm, to, term=1)


def test_round_trip_is_timed_from_a_heartbeat_to_its_response():
    clock = Clock()
    stats = PeerStats(clock)
    stats.sent(_msg(MessageType.HEARTBEAT, "n1", "n2"), 10)
    clock.advance(0.004)
    stats.sent(_msg(MessageType.HEARTBEAT, "n1", "n2"), 10)  # the first one is still the one timed
    clock.advance(0.003)
    stats.received(_msg(MessageType.HEARTBEAT_RESP, "n2", "n1"), 7)
    assert abs(stats.rtt_seconds["n2"] - 0.007) < 1e-9
    clock.advance(1)
    stats.received(_msg(MessageType.HEARTBEAT_RESP, "n2", "n1"), 7)  # no heartbeat out: no sample
    assert abs(stats.rtt_seconds["n2"] - 0.007) < 1e-9
    assert (stats.bytes_sent["n2"], stats.bytes_received["n2"], stats.last_heard["n2"]) == (20, 14, clock.seconds())
    stats.forget("n2")
    assert "n2" not in stats.rtt_seconds and "n2" not in stats.bytes_sent


def test_refusal_reasons_are_bounded():
    stats = PeerStats(Clock())
    for i in range(MAX_REASONS + 10):
        stats.refuse(f"r{i}")
    assert len(stats.refused) == MAX_REASONS + 1 and stats.refused["other"] == 10


class _Node:
    leader, role, term = "", Role.FOLLOWER, 0

    def on_role_change(self, watcher):
        pass


class _Sources:
    node_id = "n1"
    node = _Node()


def test_leader_history_says_who_led_when_and_why():
    view = ClusterView(_Sources(), directory=None, dialer=None, reactor=Clock(), free_bytes=lambda: None,
                       address_of=lambda nid: "")
    for soft in (SoftState("", Role.FOLLOWER, 0), SoftState("n2", Role.FOLLOWER, 1),
                 SoftState("n2", Role.FOLLOWER, 1), SoftState("", Role.PRE_CANDIDATE, 1),
                 SoftState("n1", Role.LEADER, 2), SoftState("", Role.FOLLOWER, 3),
                 SoftState("n3", Role.FOLLOWER, 3)):
        view.on_soft_state(soft)
    assert [(h["term"], h["leader"], h["reason"]) for h in view.history] == [
        (0, None, "no leader known yet"),
        (1, "n2", "a leader was elected"),
        (1, None, "lost contact with n2"),
        (2, "n1", "this node won the election"),
        (3, None, "this node stepped down"),
        (3, "n3", "a leader was elected"),
    ]
