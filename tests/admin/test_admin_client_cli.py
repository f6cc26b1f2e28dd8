"""The client side of membership: frames, StorgClient's waiting rules, storgctl's arguments and output."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from storg.cli import main as cli
from storg.cli.members import AddProgress, format_members
from storg.client.api import StorgClient
from storg.client.errors import ClusterUnavailable, NotFoundError
from storg.net.connection import RequestConnection
from storg.wire import CODEC, ErrorCode, ErrorReply
from storg.wire.admin import (
    LeaderTransferDone,
    LeaderTransferRequest,
    MemberAddProgress,
    MemberAddRequest,
    MemberChanged,
    MemberInfo,
    MemberListReply,
    MemberListRequest,
    MemberRemoveRequest,
    RemovedNotice,
)

ids = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40)

frames = st.one_of(
    st.builds(MemberListRequest, u64),
    st.builds(MemberListReply, u64, st.lists(st.builds(MemberInfo, ids, ids, text, text),
                                             max_size=5).map(tuple)),
    st.builds(MemberAddRequest, u64, ids, text, text, st.booleans()),
    st.builds(MemberAddProgress, u64, ids, u64, u64, ids),
    st.builds(MemberChanged, u64, ids, ids, u64),
    st.builds(MemberRemoveRequest, u64, ids),
    st.builds(LeaderTransferRequest, u64, ids | st.just("")),
    st.builds(LeaderTransferDone, u64, ids, u64),
    st.builds(RemovedNotice, u64, ids, ids, u64, u64),
)


@settings(max_examples=150, deadline=None)
@given(frames)
def test_admin_frames_round_trip_in_their_type_byte_range(frame):
    data = CODEC.encode(frame)
    assert 110 <= data[1] <= 119
    assert CODEC.decode(data) == frame


# --- StorgClient against one scripted connection -------------------------------------


class Scripted:
    """A StorgClient whose only node is a RequestConnection on a StringTransport."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.client = StorgClient(["127.0.0.1:1"], reactor=self.clock, timeout=timeout)
        self.conns: list[RequestConnection] = []

        async def connection(address, timeout=None):
            conn = RequestConnection()
            conn.makeConnection(StringTransport())
            self.conns.append(conn)
            return conn

        self.client.connection = connection

    def last_request(self):
        conn = self.conns[-1]
        data = conn.transport.value()
        (size,) = struct.unpack("!I", data[:4])
        return CODEC.decode(data[4:4 + size])

    def reply(self, frame) -> None:
        self.conns[-1].stringReceived(CODEC.encode(frame))


def outcome(coro):
    out: list = []
    defer.Deferred.fromCoroutine(coro).addBoth(out.append)
    return out


def test_member_add_waits_as_long_as_the_learner_moves():
    s = Scripted(timeout=5.0)
    seen: list = []
    out = outcome(s.client.member_add("d", "127.0.0.1:7004", "127.0.0.1:8004", progress=seen.append))
    request = s.last_request()
    assert request == MemberAddRequest(request.request_id, "d", "127.0.0.1:7004", "127.0.0.1:8004", False)
    for i in range(10):  # 15 s in all, far past the 5 s timeout, but moving
        s.clock.advance(1.5)
        s.reply(MemberAddProgress(request.request_id, "d", 10 * i, 100, "replicate"))
    assert not out and len(seen) == 10
    s.reply(MemberChanged(request.request_id, "d", "voter", 101))
    assert out == [MemberChanged(request.request_id, "d", "voter", 101)]


def test_member_add_gives_up_when_the_learner_does_not_move():
    s = Scripted(timeout=5.0)
    out = outcome(s.client.member_add("d", "127.0.0.1:7004", "127.0.0.1:8004"))
    rid = s.last_request().request_id
    for _ in range(4):
        s.clock.advance(1.5)
        s.reply(MemberAddProgress(rid, "d", 0, 100, "probe"))
    assert len(out) == 1 and out[0].check(ClusterUnavailable)
    assert "join: true" in str(out[0].value)


def test_a_retried_remove_that_finds_the_member_gone_succeeds():
    s = Scripted()
    out = outcome(s.client.member_remove("d"))
    s.conns[-1].connectionLost(None)  # the outcome of the first attempt is unknown
    s.clock.advance(1.0)
    rid = s.last_request().request_id
    s.reply(ErrorReply(rid, int(ErrorCode.NOT_FOUND), "d is not a member"))
    assert out and isinstance(out[0], MemberChanged) and out[0].role == "removed"


def test_removing_an_unknown_member_is_not_found():
    s = Scripted()
    out = outcome(s.client.member_remove("d"))
    s.reply(ErrorReply(s.last_request().request_id, int(ErrorCode.NOT_FOUND), "d is not a member"))
    assert out[0].check(NotFoundError)


def test_transfer_and_list_follow_a_redirect():
    s = Scripted()
    out = outcome(s.client.leader_transfer("b"))
    s.reply(ErrorReply(s.last_request().request_id, int(ErrorCode.NOT_LEADER), "", "127.0.0.1:2"))
    request = s.last_request()
    assert request == LeaderTransferRequest(request.request_id, "b")
    s.reply(LeaderTransferDone(request.request_id, "b", 7))
    assert out == [LeaderTransferDone(request.request_id, "b", 7)]


# --- storgctl ------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["member", "add", "d", "--peer", "127.0.0.1:7004"], "--client"),
    (["member", "add", "D", "--peer", "127.0.0.1:7004", "--client", "127.0.0.1:8004"], "node id"),
    (["member", "add", "d", "--peer", "nohost", "--client", "127.0.0.1:8004"], "--peer"),
    (["member", "remove"], "ID"),
    (["member", "frobnicate"], "invalid choice"),
    (["leader", "transfer", "Bad!"], "node id"),
    (["leader"], "SUBCOMMAND"),
])
def test_bad_arguments_exit_2_before_contacting_anyone(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--cluster", "127.0.0.1:1", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("storgctl: ") and message in err and err.count("\n") == 1


def test_an_unreachable_cluster_exits_3():
    out = subprocess.run([sys.executable, "-m", "storg.cli.main", "--cluster", "127.0.0.1:1",
                          "--timeout", "0.5", "member", "list"], capture_output=True, timeout=60)
    assert out.returncode == 3 and out.stderr.startswith(b"storgctl: cluster unavailable")


def test_progress_lines_are_rate_limited_and_say_what_is_waited_for():
    now = [0.0]
    out = io.StringIO()
    bar = AddProgress(out, interval=1.0, clock=lambda: now[0])
    bar(MemberAddProgress(1, "n4", 0, 5678, "probe"))
    bar(MemberAddProgress(1, "n4", 1234, 5678, "replicate"))  # too soon: skipped
    now[0] = 1.5
    bar(MemberAddProgress(1, "n4", 1234, 5678, "replicate"))
    bar(MemberAddProgress(1, "n4", 5678, 5678, "replicate"))  # caught up: always shown
    assert out.getvalue().splitlines() == [
        "n4: learner, waiting for it to connect (0/5678 entries)",
        "n4: learner, 1234/5678 entries",
        "n4: learner, 5678/5678 entries",
    ]


def test_member_table():
    table = format_members([MemberInfo("n1", "voter", "127.0.0.1:7001", "127.0.0.1:8001"),
                            MemberInfo("n10", "learner", "", "")])
    assert table.splitlines() == [
        "ID   ROLE     PEER            CLIENT",
        "n1   voter    127.0.0.1:7001  127.0.0.1:8001",
        "n10  learner  -               -",
    ]
