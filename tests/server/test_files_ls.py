"""``ls`` on a node: a point-in-time listing sent a page at a time, never all in one reactor turn."""

from __future__ import annotations

from twisted.internet import defer

from storg.raft.types import Entry, EntryType
from storg.server.files import service as files_module
from storg.wire import CODEC
from storg.wire.chunks import PutInlineCommand, RemoveFileCommand
from storg.wire.files import LsReply, LsRequest

from tests.server.test_files_streaming import Conn, make

PAGE = 10


def put_small(fsm, index: int, path: str) -> None:
    cmd = PutInlineCommand(0, index, 1_000, path, path.encode(), ("n1",))
    fsm.apply(Entry(1, index, EntryType.NORMAL, CODEC.encode(cmd)))


class HeldConn(Conn):
    """A connection whose socket buffer is full until ``drain`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[defer.Deferred] = []

    def writable(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append(d)
        return d

    def drain(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


def listed(conn: Conn, result: list) -> list[str]:
    pages = [f for f in conn.sent if isinstance(f, LsReply)] + result
    assert [p.more for p in pages] == [True] * (len(pages) - 1) + [False]
    return [info.path for page in pages for info in page.files]


def test_ls_sends_a_page_per_reactor_turn_and_waits_for_the_socket(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "LS_PAGE", PAGE)
    service, fsm, _ = make(tmp_path)
    clock = service.reactor
    names = [f"/d/{i:03d}" for i in range(35)]
    for i, name in enumerate(names, start=1):
        put_small(fsm, i, name)
    conn = HeldConn()
    result: list = []
    service.ls(LsRequest(5, "/d", False), conn).addCallback(result.append)

    assert len(conn.sent) == 1 and not result  # one page, then it waits for the socket
    clock.advance(0)
    assert len(conn.sent) == 1  # still waiting: the buffer is full
    conn.drain()
    assert len(conn.sent) == 1  # the buffer has room, but the reactor gets a turn first
    clock.advance(0)
    assert len(conn.sent) == 2
    # The namespace changes under the listing: it stays as it was at the read point.
    fsm.apply(Entry(1, 100, EntryType.NORMAL, CODEC.encode(RemoveFileCommand(0, 100, 1_000, "/d/034"))))
    put_small(fsm, 101, "/d/999")
    while not result:
        conn.drain()
        clock.advance(0)
    assert listed(conn, result) == names
    assert [f.chunks for page in result for f in page.files] == [()] * 5  # ls sends no chunk lists


def test_ls_stops_when_the_client_goes_away(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "LS_PAGE", PAGE)
    service, fsm, _ = make(tmp_path)
    for i in range(1, 31):
        put_small(fsm, i, f"/f{i:02d}")
    conn = HeldConn()
    result: list = []
    service.ls(LsRequest(5, "/", False), conn).addCallback(result.append)
    conn.open = False
    conn.drain()
    service.reactor.advance(0)
    assert result == [None] and len(conn.sent) == 1


def test_ls_of_an_empty_folder_and_of_exactly_one_page(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "LS_PAGE", PAGE)
    service, fsm, _ = make(tmp_path)
    result: list = []
    service.ls(LsRequest(1, "/none", False), Conn()).addCallback(result.append)
    assert len(result) == 1 and result[0].files == () and not result[0].more
    for i in range(1, PAGE + 1):
        put_small(fsm, i, f"/p/{i:02d}")
    conn, result = Conn(), []
    service.ls(LsRequest(2, "/p", False), conn).addCallback(result.append)
    assert listed(conn, result) == [f"/p/{i:02d}" for i in range(1, PAGE + 1)] and conn.sent == []
