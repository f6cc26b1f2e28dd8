"""GetStream's resume after a lost node, driven frame by frame, and PutStream's upload slot (fake connections).

The real resume runs in tests/client/test_client_objects.py and the process
tests; here the interleavings that are hard to hit there are made to happen:
the node goes away while a piece it sent whole is still being hashed, or
after the last byte but before GetEnd.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost

import storg.client.streams as streams
from storg.client.errors import IntegrityError
from storg.client.transfer import Deadline
from storg.wire.files import ChunkRef, FileInfo, GetData, GetEnd, GetStart

CHUNKS = [b"aaaa", b"bbbb", b"cccc"]
INFO = FileInfo("/b/k", 12, hashlib.sha256(b"".join(CHUNKS)).hexdigest(), 1, 5,
                tuple(ChunkRef(hashlib.sha256(c).hexdigest(), 4, ("n1",)) for c in CHUNKS))


class FakeStream:
    def __init__(self, request: Any, on_frame: Any) -> None:
        self.request = request
        self.on_frame = on_frame
        self.done: defer.Deferred = defer.Deferred()
        self.finished = False
        self.done.addBoth(self._finish)

    def _finish(self, result: Any) -> Any:
        self.finished = True
        return result

    def abort(self, exc: Exception) -> None:
        if not self.finished:
            self.done.errback(exc)


class FakeConnection:
    def __init__(self) -> None:
        self.streams: list[FakeStream] = []

    def request_stream(self, make: Any, on_frame: Any) -> FakeStream:
        stream = FakeStream(make(1), on_frame)
        self.streams.append(stream)
        return stream

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def _forget(self, stream: FakeStream) -> None:
        pass


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list:
    """Thread work (hashing) held until the test runs it: ``run_all(held)``."""
    pending: list = []

    def in_thread(reactor: Any, f: Any, *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        pending.append((d, f, args))
        return d

    # Pieces this small are hashed at once in real runs (hash_off_reactor); held here as a large
    # piece's hash is, so the node can go away while it is still being hashed.
    monkeypatch.setattr(streams, "in_thread", in_thread)
    monkeypatch.setattr(streams, "hash_off_reactor", in_thread)
    return pending


def run_all(pending: list) -> None:
    while pending:
        d, f, args = pending.pop(0)
        d.callback(f(*args))


def get_stream(out: list, **kw: Any) -> streams.GetStream:
    return streams.GetStream(task.Clock(), "/b/k", out.append, offset=kw.get("offset", 0),
                             length=kw.get("length"), stale=False, on_start=lambda info, index: None)


@pytest.mark.parametrize("ranged", [False, True])
def test_a_node_lost_while_a_piece_is_hashed_resumes_after_that_piece(held: list, ranged: bool) -> None:
    out: list[bytes] = []
    g = get_stream(out, length=12 if ranged else None)
    first = FakeConnection()
    d1 = defer.Deferred.fromCoroutine(g.attempt(first, Deadline(task.Clock(), 30)))
    s1 = first.streams[0]
    s1.on_frame(GetStart(1, INFO, 5))
    s1.on_frame(GetData(1, CHUNKS[0]))
    run_all(held)
    s1.on_frame(GetData(1, CHUNKS[1]))  # being hashed when the node goes away
    assert held
    s1.done.errback(ConnectionLost())
    d1.addErrback(lambda failure: None)
    second = FakeConnection()
    d2 = defer.Deferred.fromCoroutine(g.attempt(second, Deadline(task.Clock(), 30)))
    assert second.streams == [], "the resumed attempt waits for the piece in hand"
    run_all(held)
    request = second.streams[0].request
    assert (request.offset, request.length) == (8, 4), "it asks for the bytes after what was handed on"
    s2 = second.streams[0]
    s2.on_frame(GetStart(1, INFO, 6))
    s2.on_frame(GetData(1, CHUNKS[2]))
    run_all(held)
    s2.on_frame(GetEnd(1))
    run_all(held)
    assert b"".join(out) == b"".join(CHUNKS)
    assert d2.result == INFO


def test_a_node_lost_before_get_end_still_checks_the_whole_file(held: list) -> None:
    """The last piece arrived (damaged) and the node went away before GetEnd: no success without the hash."""
    out: list[bytes] = []
    g = get_stream(out)
    conn = FakeConnection()
    d1 = defer.Deferred.fromCoroutine(g.attempt(conn, Deadline(task.Clock(), 30)))
    s1 = conn.streams[0]
    s1.on_frame(GetStart(1, INFO, 5))
    for piece in (CHUNKS[0], CHUNKS[1], b"XXXX"):
        s1.on_frame(GetData(1, piece))
        run_all(held)
    s1.done.errback(ConnectionLost())
    d1.addErrback(lambda failure: None)
    d2 = defer.Deferred.fromCoroutine(g.attempt(FakeConnection(), Deadline(task.Clock(), 30)))
    run_all(held)
    failures: list = []
    d2.addErrback(failures.append)
    assert failures and failures[0].check(IntegrityError), "a resumed get at the end is checked, not trusted"


def test_a_put_stream_aborted_while_waiting_for_an_upload_slot_takes_none() -> None:
    """The semaphore of uploads in flight stays exact: an abort before the slot came frees nothing."""
    from storg.client.api import StorgClient
    clock = task.Clock()
    client = StorgClient(["127.0.0.1:1"], reactor=clock, max_uploads=1)
    never: defer.Deferred = defer.Deferred()
    client.retrying = lambda attempt, **kw: never  # type: ignore[method-assign]  # the leader being found
    first = client.put_stream("/b/one")  # holds the only slot
    second = client.put_stream("/b/two")  # waits for it
    slots = client._upload_slots
    assert slots.tokens == 0 and len(slots.waiting) == 1
    second.abort()
    assert slots.tokens == 0
    first.abort()
    assert slots.tokens == 1 and not slots.waiting, "both given up: the one slot is free, none extra"
