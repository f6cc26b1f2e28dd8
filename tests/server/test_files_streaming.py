"""Big files on a node: the pipelined get never sends an unverified byte; uploads stay in their window.

The chunk pool runs jobs at once (or holds them), so every step is
deterministic; frames sent with the zero-copy path are read back from a
StringTransport with the real framing and codec.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from storg.fsm.machine import FileStoreStateMachine
from storg.net.framing import FrameReceiver
from storg.raft.types import ConfState, Entry, EntryType
from storg.server.client_port import RequestError
from storg.server.files.chunk_io import Chunks
from storg.server.files.service import FileService
from storg.storage.chunks import ChunkStore
from storg.wire import CODEC, ErrorCode
from storg.wire.bulk import decode_bulk
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef, GetData, GetRequest, GetStart, PutData, PutEnd, PutStart

from tests.server.test_files_small import FakeNode as LeaderOfThree
from tests.server.test_files_small import NoRemote

CHUNK = 128 * 1024


class InlinePool:
    """LocalChunks whose jobs run on the spot."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def run(self, fn, *args) -> defer.Deferred:
        return defer.maybeDeferred(fn, *args)

    def get(self, chunk_hash: str) -> defer.Deferred:
        return self.run(self.store.get, chunk_hash)

    def hash(self, data: bytes) -> defer.Deferred:
        return defer.succeed(hashlib.sha256(data).hexdigest())


class FakeCore:
    conf = ConfState(voters=frozenset({"n1"}))
    last_index = 0


class FakeNode(LeaderOfThree):
    """The small-file tests' leader, alone in its cluster, recording what it is asked to propose."""

    core = FakeCore()

    def propose(self, data: bytes) -> defer.Deferred:
        self.proposed = CODEC.decode(data)
        return defer.succeed("applied")


class Conn:
    """A client connection: small frames through ``send``, bulk ones on the transport."""

    open = True

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.transport = StringTransport()
        self.pauses = 0
        self.resumes = 0

    backed_up = False

    def send(self, frame) -> None:
        self.sent.append(frame)

    def send_all(self, frames) -> None:
        self.sent.extend(frames)

    def send_soon(self, frame) -> None:
        self.sent.append(frame)

    def writable(self) -> defer.Deferred:
        return defer.succeed(None)

    def on_close(self, callback) -> None:
        pass

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        self.resumes += 1

    def bulk_frames(self) -> list[object]:
        frames: list[bytes] = []
        receiver = FrameReceiver()
        receiver.stringReceived = frames.append
        receiver.makeConnection(StringTransport())
        receiver.dataReceived(self.transport.value())
        return [decode_bulk(f) for f in frames]


def run_inline(fn, *args) -> defer.Deferred:
    """An executor that runs each call at once (the tests' stand-in for the hash pool)."""
    return defer.maybeDeferred(fn, *args)


def make(tmp_path, **kwargs):
    store = ChunkStore(tmp_path / "chunks")
    fsm = FileStoreStateMachine()
    service = FileService(FakeNode(), fsm, Chunks("n1", InlinePool(store), NoRemote()),
                          replication_factor=1, chunk_size=CHUNK, reactor=Clock(),
                          hasher=run_inline, **kwargs)
    return service, fsm, store


def commit_file(fsm, store, path: str, chunks: list[bytes]) -> None:
    refs = tuple(ChunkRef(store.put(c), len(c), ("n1",)) for c in chunks)
    whole = b"".join(chunks)
    cmd = PutFileCommand(0, 1, 1_000, path, len(whole), hashlib.sha256(whole).hexdigest(), refs)
    fsm.apply(Entry(1, 1, EntryType.NORMAL, CODEC.encode(cmd)))


def test_get_reads_ahead_yet_stops_at_a_corrupt_chunk_without_sending_it(tmp_path):
    service, fsm, store = make(tmp_path)
    chunks = [os.urandom(CHUNK) for _ in range(6)]
    commit_file(fsm, store, "/big", chunks)
    bad = store.path(hashlib.sha256(chunks[3]).hexdigest())
    damaged = bytearray(bad.read_bytes())
    damaged[100] ^= 1
    bad.write_bytes(bytes(damaged))

    conn = Conn()
    d = service.get(GetRequest(7, "/big", False), conn)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(RequestError)
    assert failure[0].value.code == ErrorCode.INTEGRITY
    assert [type(f) for f in conn.sent] == [GetStart]
    sent = conn.bulk_frames()
    assert [type(f) for f in sent] == [GetData] * 3
    assert [bytes(f.data) for f in sent] == chunks[:3]  # only verified chunks, in order


def test_get_of_an_intact_file_sends_every_chunk_once_in_order(tmp_path):
    service, fsm, store = make(tmp_path)
    chunks = [os.urandom(CHUNK) for _ in range(5)] + [b"tail"]
    commit_file(fsm, store, "/f", chunks)
    conn = Conn()
    result = []
    service.get(GetRequest(3, "/f", False), conn).addCallback(result.append)
    assert result == [None] and type(conn.sent[-1]).__name__ == "GetEnd"  # the handler sent its end itself
    big = [bytes(f.data) for f in conn.bulk_frames()]
    small = [f.data for f in conn.sent if isinstance(f, GetData)]
    assert big + small == chunks


class HeldReplication:
    """Stands in for FileService.replicate: chunks stay in flight until released."""

    def __init__(self) -> None:
        self.pending: list[tuple[defer.Deferred, bytes]] = []

    def __call__(self, chunk, pins, placed=None) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, chunk))
        return d

    def release_one(self) -> None:
        d, chunk = self.pending.pop(0)
        d.callback(ChunkRef(hashlib.sha256(chunk).hexdigest(), len(chunk), ("n1",)))


def test_upload_stops_reading_past_its_window_and_resumes_as_chunks_settle(tmp_path):
    service, _, _ = make(tmp_path, upload_window_chunks=3)
    service.hasher = lambda fn, *args: defer.maybeDeferred(fn, *args)
    replication = HeldReplication()
    service.replicator.replicate = replication
    conn = Conn()
    service.put_start(PutStart(1, "/up", 5, 1), conn)
    data = [os.urandom(CHUNK) for _ in range(5)]
    for piece in data[:4]:
        service.put_data(PutData(1, piece), conn)
    # Three chunks fit the window; the fourth goes past it: reading stops.
    assert conn.pauses == 1 and conn.resumes == 0
    assert len(replication.pending) == 4
    replication.release_one()
    assert conn.resumes == 1
    # The frame that arrived as one whole chunk became the chunk without a copy.
    assert replication.pending[0][1] is data[1]


def test_uploads_together_stop_reading_past_the_node_budget_and_resume_as_chunks_settle(tmp_path):
    """Four uploads on one connection (the gateway's parts), each within its own window of
    three chunks: the node's budget (two windows, six chunks) is what stops the reading."""
    service, _, _ = make(tmp_path, upload_window_chunks=3)
    assert service.upload_budget.limit == 6 * CHUNK
    service.hasher = lambda fn, *args: defer.maybeDeferred(fn, *args)
    replication = HeldReplication()
    service.replicator.replicate = replication
    conn = Conn()
    for rid in (1, 2, 3, 4):
        service.put_start(PutStart(rid, f"/part{rid}", 5, rid), conn)
    for rid in (1, 2, 3):
        for _ in range(2):
            service.put_data(PutData(rid, os.urandom(CHUNK)), conn)
    assert conn.pauses == 0  # six chunks in flight: at the budget, not past it
    service.put_data(PutData(4, os.urandom(CHUNK)), conn)
    assert conn.pauses == 1 and conn.resumes == 0
    assert service.upload_budget.in_flight == 7 * CHUNK
    replication.release_one()  # one of the first upload's chunks is stored: back within the budget
    assert conn.resumes == 1 and service.upload_budget.in_flight == 6 * CHUNK
    while replication.pending:
        replication.release_one()
    assert service.upload_budget.in_flight == 0 and conn.pauses == conn.resumes == 1


def test_upload_hash_covers_bytes_hashed_inline_and_in_the_thread(tmp_path):
    """Frames of odd sizes: the first bytes are hashed on the reactor, the rest in order in
    the thread; the PutEnd check sees the digest of the whole stream."""
    service, _, _ = make(tmp_path)
    jobs = []

    def held(fn, *args):
        d = defer.Deferred()
        jobs.append((d, fn, args))
        return d

    service.hasher = held
    replication = HeldReplication()
    service.replicator.replicate = replication
    conn = Conn()
    service.put_start(PutStart(1, "/odd", 5, 1), conn)
    stream = os.urandom(3 * CHUNK + 1234)
    cuts = [0, 1000, 5000, 40000, CHUNK + 7, 2 * CHUNK, len(stream)]
    for a, b in itertools.pairwise(cuts):
        service.put_data(PutData(1, stream[a:b]), conn)
    upload = next(iter(service._uploads.values()))
    end = service.put_end(PutEnd(1, len(stream), hashlib.sha256(stream).hexdigest()), conn)
    assert not end.called
    assert len(jobs) == 1  # one hash job at a time, in order
    while jobs:
        d, fn, args = jobs.pop(0)
        d.callback(fn(*args))
    while replication.pending:
        replication.release_one()
    assert upload.hasher.hexdigest() == hashlib.sha256(stream).hexdigest()
    proposed = service.node.proposed
    inner = CODEC.decode(proposed.command)
    assert end.called and inner.sha256 == hashlib.sha256(stream).hexdigest()
    assert inner.size == len(stream)
    # The MD5 saw the very same bytes (on the reactor first, then in the thread): the ETag.
    assert proposed.attrs.etag == hashlib.md5(stream).hexdigest()


def test_upload_whose_bytes_differ_from_its_put_end_is_refused(tmp_path):
    service, _, _ = make(tmp_path)
    service.hasher = lambda fn, *args: defer.maybeDeferred(fn, *args)
    replication = HeldReplication()
    service.replicator.replicate = replication
    conn = Conn()
    service.put_start(PutStart(1, "/bad", 5, 1), conn)
    stream = os.urandom(2 * CHUNK)
    service.put_data(PutData(1, stream[:CHUNK]), conn)
    service.put_data(PutData(1, stream[CHUNK:]), conn)
    wrong = hashlib.sha256(stream[:-1] + b"x").hexdigest()
    end = service.put_end(PutEnd(1, len(stream), wrong), conn)
    while replication.pending:
        replication.release_one()
    failure = []
    end.addErrback(failure.append)
    assert failure and failure[0].value.code == ErrorCode.INTEGRITY


@pytest.mark.parametrize("verified", [False, True])
def test_leader_copy_is_hashed_once(tmp_path, monkeypatch, verified):
    """ChunkOps.put(verified=True) stores without hashing the bytes again."""
    service, _, store = make(tmp_path)
    data = os.urandom(CHUNK)
    digest = hashlib.sha256(data).hexdigest()
    calls = []
    real = hashlib.sha256

    def counting(*args):
        calls.append(1)
        return real(*args)

    import storg.storage.chunks as chunks_module
    monkeypatch.setattr(chunks_module.hashlib, "sha256", counting)
    done = []
    service.ops.put(digest, data, verified=verified).addCallback(done.append)
    monkeypatch.setattr(chunks_module.hashlib, "sha256", real)
    assert done and store.get(digest) == data
    assert len(calls) == (0 if verified else 1)
