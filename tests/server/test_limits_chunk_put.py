"""ChunkPutAfter on a holder: no bigger than a chunk, and only for chunks the leader placed here.

Anyone can reach the client port; a put of a chunk nobody placed on this
node is refused before a byte is written, and the node keeps taking the
copies the leader did place.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer

from storg.server.client_port import RequestError
from storg.wire import ErrorCode
from storg.wire.chunks import ChunkPlacedQuery, ChunkPlacedReply, ChunkPutAfter, ChunkStored

from tests.server.test_files_streaming import CHUNK, Conn, commit_file, make


def put(service, data: bytes, chunk_hash: str | None = None) -> object:
    """The handler's outcome: the reply, or the RequestError it failed with."""
    req = ChunkPutAfter(7, chunk_hash or hashlib.sha256(data).hexdigest(), 0, data)
    outcome: list[object] = []
    d = defer.maybeDeferred(service.chunk_put_after, req, Conn())
    d.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    assert outcome, "settled at once with inline pools"
    return outcome[0]


class Leader:
    """Stands for the leader's client port: answers ChunkPlacedQuery from a set of placements."""

    def __init__(self, placed: set[tuple[str, str]] | None = None, fail: bool = False) -> None:
        self.placed = placed if placed is not None else set()
        self.fail = fail
        self.asked: list[ChunkPlacedQuery] = []
        self.timeout = 1.0

    def connection(self, node_id: str) -> defer.Deferred:
        if self.fail:
            return defer.fail(ConnectionRefusedError(node_id))
        return defer.succeed(self)

    def request(self, make_request) -> defer.Deferred:
        query = make_request(1)
        self.asked.append(query)
        return defer.succeed(ChunkPlacedReply(1, (query.hash, query.holder) in self.placed))


def follower(tmp_path, leader: Leader):
    service, fsm, store = make(tmp_path)
    node = service.node
    node.node_id = "n2"
    node.leader = "n1"
    node.is_leader = lambda: False
    service.chunks.remote = leader
    return service, fsm, store


def test_a_chunk_bigger_than_the_chunk_size_is_refused_unwritten(tmp_path) -> None:
    service, fsm, store = make(tmp_path)
    data = os.urandom(CHUNK + 1)
    h = hashlib.sha256(data).hexdigest()
    service.replicator._placements[(h, "n1")] = 1  # even if placed: too big is too big
    outcome = put(service, data)
    assert isinstance(outcome, RequestError) and outcome.code == ErrorCode.LIMIT_EXCEEDED
    assert "files.chunk_size" in str(outcome)
    assert not store.has(h)


def test_on_the_leader_only_chunks_its_uploads_placed_here_are_taken(tmp_path) -> None:
    service, fsm, store = make(tmp_path)
    stray = os.urandom(1000)
    outcome = put(service, stray)
    assert isinstance(outcome, RequestError) and outcome.code == ErrorCode.BAD_REQUEST
    assert "not placed" in str(outcome)
    assert not store.has(hashlib.sha256(stray).hexdigest())

    placed = os.urandom(CHUNK)
    h = hashlib.sha256(placed).hexdigest()
    service.replicator._placements[(h, "n1")] = 1
    assert isinstance(put(service, placed), ChunkStored)
    assert store.has(h)


def test_a_follower_asks_the_leader_and_writes_only_what_it_placed(tmp_path) -> None:
    good, bad = os.urandom(CHUNK), os.urandom(CHUNK)
    good_hash, bad_hash = (hashlib.sha256(x).hexdigest() for x in (good, bad))
    leader = Leader({(good_hash, "n2")})
    service, fsm, store = follower(tmp_path, leader)

    outcome = put(service, bad)
    assert isinstance(outcome, RequestError) and outcome.code == ErrorCode.BAD_REQUEST
    assert not store.has(bad_hash)
    assert isinstance(put(service, good), ChunkStored)
    assert store.has(good_hash)
    assert [(q.hash, q.holder) for q in leader.asked] == [(bad_hash, "n2"), (good_hash, "n2")]


def test_a_follower_that_cannot_ask_the_leader_refuses(tmp_path) -> None:
    service, fsm, store = follower(tmp_path, Leader(fail=True))
    data = os.urandom(100)
    outcome = put(service, data)
    assert isinstance(outcome, RequestError) and outcome.code == ErrorCode.BAD_REQUEST
    assert not store.has(hashlib.sha256(data).hexdigest())


def test_a_chunk_the_map_knows_is_taken_without_asking(tmp_path) -> None:
    leader = Leader()
    service, fsm, store = follower(tmp_path, leader)
    data = os.urandom(CHUNK)
    commit_file(fsm, store, "/known", [data])
    h = hashlib.sha256(data).hexdigest()
    store.delete(h)
    assert isinstance(put(service, data), ChunkStored)  # a repair copy of a committed chunk
    assert store.has(h) and leader.asked == []


def test_the_leader_answers_placement_queries_from_its_uploads(tmp_path) -> None:
    service, fsm, store = make(tmp_path)
    h = "ab" * 32
    assert service.chunk_placed(ChunkPlacedQuery(3, h, "n2"), Conn()) == ChunkPlacedReply(3, False)
    service.replicator._placements[(h, "n2")] = 1
    assert service.chunk_placed(ChunkPlacedQuery(4, h, "n2"), Conn()) == ChunkPlacedReply(4, True)
    assert service.chunk_placed(ChunkPlacedQuery(5, h, "n3"), Conn()).placed is False


def test_placements_are_released_when_the_upload_ends(tmp_path) -> None:
    service, fsm, store = make(tmp_path)
    placed: list[tuple[str, int, str]] = []
    chunk = os.urandom(CHUNK)
    d = service.replicator.replicate(chunk, [], placed)
    assert d.called
    h = hashlib.sha256(chunk).hexdigest()
    assert service.replicator.is_placed(h, "n1")
    service.replicator.unplace(placed)
    assert not service.replicator.is_placed(h, "n1")
    assert service.replicator._placements == {}


def test_a_follower_that_has_not_heard_from_a_leader_yet_asks_once_it_has(tmp_path) -> None:
    """A node just started gets the leader's copy before the leader's first message: asked at
    once it would have no leader to ask and refuse; it asks after it has applied the index."""
    data = os.urandom(CHUNK)
    h = hashlib.sha256(data).hexdigest()
    leader = Leader({(h, "n2")})
    service, fsm, store = follower(tmp_path, leader)
    node = service.node
    node.leader = ""  # no leader heard of yet
    node.applied_index = 0
    outcome: list[object] = []
    d = defer.maybeDeferred(service.chunk_put_after, ChunkPutAfter(7, h, 5, data), Conn())
    d.addCallbacks(outcome.append, lambda f: outcome.append(f.value))
    assert outcome == [] and leader.asked == []  # waiting for index 5; nobody asked yet
    node.leader, node.applied_index = "n1", 5  # the leader's first append arrived and applied
    service.reactor.advance(1.0)
    assert len(outcome) == 1 and isinstance(outcome[0], ChunkStored), outcome
    assert store.has(h) and [(q.hash, q.holder) for q in leader.asked] == [(h, "n2")]
