"""WatchHub: the ring of applied changes, the watch stream, compaction, marks and slow watchers."""

from __future__ import annotations

import pytest

from storg.fsm.state import Change
from storg.server.client_port import RequestError
from storg.server.files.watch import WatchHub
from storg.wire import ErrorCode, ErrorReply
from storg.wire.tree import WATCH_CREATE, WATCH_DELETE, WATCH_MOVE, WatchEvent, WatchRequest


class FakeNode:
    node_id = "n1"
    applied_index = 0


class FakeFsm:
    on_entry = None
    on_install = None


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.closers: list = []
        self.backed_up = False

    def send(self, obj: object) -> None:
        self.sent.append(obj)

    def on_close(self, callback) -> None:
        self.closers.append(callback)

    def events(self) -> list[tuple[int, int, str, str]]:
        return [(e.index, e.kind, e.path, e.src) for e in self.sent if isinstance(e, WatchEvent)]


def hub_with(capacity: int = 100) -> tuple[WatchHub, FakeFsm]:
    fsm = FakeFsm()
    hub = WatchHub(FakeNode(), fsm, capacity=capacity, max_behind=3)
    assert fsm.on_entry == hub.entry and fsm.on_install == hub.reset
    return hub, fsm


def test_a_watch_replays_the_ring_from_its_index_then_streams_live():
    hub, _ = hub_with()
    hub.entry(1, [Change(WATCH_CREATE, "/a/x", size=1, sha256=b"\x01" * 32)])
    hub.entry(2, [])
    hub.entry(3, [Change(WATCH_CREATE, "/b/y")])
    hub.entry(4, [Change(WATCH_MOVE, "/b/x", "/a/x")])
    conn = FakeConn()
    hub.watch(WatchRequest(7, "/a", 1), conn)
    hub.entry(5, [Change(WATCH_DELETE, "/a/z"), Change(WATCH_CREATE, "/ab")])
    # The mark first (index start - 1), then /a's events: the move's source is below /a; /ab is not.
    assert conn.events() == [(0, 0, "", ""), (1, WATCH_CREATE, "/a/x", ""), (4, WATCH_MOVE, "/b/x", "/a/x"),
                             (5, WATCH_DELETE, "/a/z", "")]
    assert all(e.request_id == 7 for e in conn.sent)
    assert conn.sent[1].sha256 == "01" * 32 and conn.sent[1].size == 1
    hub.mark()
    assert conn.events()[-1] == (5, 0, "", "")
    conn.closers[0]()  # the connection closed
    hub.entry(6, [Change(WATCH_CREATE, "/a/late")])
    assert conn.events()[-1] == (5, 0, "", "")


def test_from_now_starts_after_the_applied_index():
    hub, _ = hub_with()
    hub.entry(1, [Change(WATCH_CREATE, "/old")])
    conn = FakeConn()
    hub.watch(WatchRequest(1, "/", 0), conn)
    hub.entry(2, [Change(WATCH_CREATE, "/new")])
    assert conn.events() == [(1, 0, "", ""), (2, WATCH_CREATE, "/new", "")]


def test_an_index_older_than_the_ring_is_compacted():
    hub, _ = hub_with(capacity=2)
    for i in range(1, 5):
        hub.entry(i, [Change(WATCH_CREATE, f"/f{i}")])
    assert hub.first_held() == 3
    with pytest.raises(RequestError) as info:
        hub.watch(WatchRequest(1, "/", 2), FakeConn())
    assert info.value.code == ErrorCode.COMPACTED
    assert "from index 3" in str(info.value) and "--from 5" in str(info.value)
    conn = FakeConn()
    hub.watch(WatchRequest(1, "/", 3), conn)
    assert [e[0] for e in conn.events()] == [2, 3, 4]


def test_a_snapshot_install_ends_every_watch_with_compacted():
    hub, fsm = hub_with()
    conn = FakeConn()
    hub.watch(WatchRequest(9, "/", 1), conn)
    fsm.on_install()
    assert isinstance(conn.sent[-1], ErrorReply) and conn.sent[-1].code == ErrorCode.COMPACTED
    assert hub.watchers == set()
    hub.node.applied_index = 50  # the snapshot's index
    hub.entry(51, [Change(WATCH_CREATE, "/after")])
    assert hub.first_held() == 51


def test_a_watcher_that_stops_reading_is_dropped_with_its_resume_index():
    hub, _ = hub_with()
    conn = FakeConn()
    hub.watch(WatchRequest(1, "/", 1), conn)
    conn.backed_up = True
    hub.entry(1, [Change(WATCH_CREATE, "/a"), Change(WATCH_CREATE, "/b")])
    assert hub.watchers
    hub.entry(2, [Change(WATCH_CREATE, "/c"), Change(WATCH_CREATE, "/d")])
    assert not hub.watchers
    assert isinstance(conn.sent[-1], ErrorReply) and conn.sent[-1].code == ErrorCode.LIMIT_EXCEEDED
    assert "--from 3" in conn.sent[-1].message


def test_a_node_serves_a_bounded_number_of_watches(monkeypatch):
    from storg.server.files import watch

    monkeypatch.setattr(watch, "MAX_WATCHERS", 2)
    hub, _ = hub_with()
    hub.watch(WatchRequest(1, "/", 1), FakeConn())
    hub.watch(WatchRequest(2, "/", 1), FakeConn())
    with pytest.raises(RequestError) as info:
        hub.watch(WatchRequest(3, "/", 1), FakeConn())
    assert info.value.code == ErrorCode.UNAVAILABLE  # the client tries another node
