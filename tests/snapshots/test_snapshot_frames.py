"""The follower's snapshot receiver against hand-made frames: what it refuses and what it keeps.

A real client-port protocol and a real client connection, linked in memory
(``twisted.test.iosim``); storage inline on disk under tmp_path.
"""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import pytest
from twisted.test import iosim

from storg.client.errors import BadRequest, IntegrityError, ServerError
from storg.net.connection import RequestConnection
from storg.node.raft_node import run_inline
from storg.raft.types import ConfState, SnapshotMeta
from storg.server.client_port import ClientPortFactory
from storg.server.snapshots.data import SnapshotWriteLock
from storg.server.snapshots.receiver import SnapshotReceiver
from storg.storage.logstore import DiskLogStore
from storg.wire import ErrorCode
from storg.wire.snapshots import (
    SnapshotBegin,
    SnapshotEnd,
    SnapshotOffset,
    SnapshotPart,
    SnapshotStored,
)

DATA = os.urandom(10_000)
SHA = hashlib.sha256(DATA).hexdigest()


class Follower:
    """A receiver whose core follows leader "L" in term 3 and has committed index 5."""

    def __init__(self, tmp_path, max_part=4096):
        self.core = SimpleNamespace(leader="L", term=3, commit_index=5)
        node = SimpleNamespace(node_id="f", core=self.core)
        self.store = DiskLogStore(tmp_path / "f")
        self.store.load()
        self.receiver = SnapshotReceiver(node, self.store, run_inline, SnapshotWriteLock(), max_part=max_part)
        self.pumps = []

    def client_handlers(self):
        return self.receiver.handlers()

    def leader_client_address(self):
        return ""

    def connect(self):
        server = ClientPortFactory(self).buildProtocol(None)
        client = RequestConnection()
        self.pumps.append(iosim.connect(server, iosim.makeFakeServer(server),
                                        client, iosim.makeFakeClient(client)))
        return client

    def pump(self):
        for _ in range(50):
            if not any([p.pump(advanceClock=False) for p in self.pumps]):
                return


DATA_SIZE = len(DATA)


def begin(rid, leader="L", term=3, index=20, size=DATA_SIZE, sha=SHA):
    return SnapshotBegin(rid, leader, term, index, 2, ("L", "f", "g"), (), size, sha)


def start(f, conn, **kw):
    """Send SnapshotBegin; returns (stream, frames seen)."""
    frames = []

    def on_frame(frame):
        frames.append(frame)
        return isinstance(frame, SnapshotStored)

    stream = conn.request_stream(lambda rid: begin(rid, **kw), on_frame)
    stream.done.addErrback(lambda failure: frames.append(failure.value))
    f.pump()
    return stream, frames


def send_parts(f, stream, data, start_at=0, size=1000):
    for pos in range(start_at, len(data), size):
        stream.send(SnapshotPart(stream.request_id, pos, data[pos:pos + size]))
        f.pump()


def test_a_whole_transfer_is_verified_and_stored(tmp_path):
    f = Follower(tmp_path)
    stream, frames = start(f, f.connect())
    assert frames == [SnapshotOffset(stream.request_id, 0)]
    send_parts(f, stream, DATA)
    stream.send(SnapshotEnd(stream.request_id))
    f.pump()
    assert frames[-1] == SnapshotStored(stream.request_id, 20, 2)
    meta = SnapshotMeta(20, 2, ConfState(frozenset({"L", "f", "g"})))
    # Staged only: current once the core adopts it (its Ready persisted).
    assert f.store.latest_snapshot() is None and f.store.snapshots.staged(meta)
    f.store.persist(meta, [], None)
    assert f.store.latest_snapshot() == meta
    with f.store.open_snapshot() as reader:
        assert reader.read(len(DATA)) == DATA


@pytest.mark.parametrize("who", [dict(leader="X"), dict(term=4), dict(term=2), dict(leader="f")])
def test_begin_from_anyone_but_the_leader_followed_in_this_term_is_refused(tmp_path, who):
    f = Follower(tmp_path)
    _stream, frames = start(f, f.connect(), **who)
    assert isinstance(frames[-1], ServerError) and frames[-1].code == ErrorCode.NOT_LEADER
    assert f.receiver._partial is None


@pytest.mark.parametrize("bad", [dict(index=0), dict(size=1 << 41)])
def test_begin_of_a_nonsensical_or_oversized_snapshot_is_refused(tmp_path, bad):
    f = Follower(tmp_path)
    _stream, frames = start(f, f.connect(), **bad)
    assert isinstance(frames[-1], BadRequest)


def test_begin_of_a_snapshot_already_covered_by_the_commit_index_is_answered_stored(tmp_path):
    f = Follower(tmp_path)
    stream, frames = start(f, f.connect(), index=5)
    assert frames == [SnapshotStored(stream.request_id, 5, 2)]
    assert f.store.latest_snapshot() is None


def test_parts_without_a_begin_are_refused_and_the_connection_dropped(tmp_path):
    f = Follower(tmp_path)
    conn = f.connect()
    frames = []
    stream = conn.request_stream(lambda rid: SnapshotPart(rid, 0, b"x"), lambda fr: frames.append(fr))
    stream.done.addErrback(lambda failure: frames.append(failure.value))
    f.pump()
    assert isinstance(frames[0], BadRequest)
    assert not conn.connected


@pytest.mark.parametrize("wrong", ["gap", "oversized", "past_the_end", "empty"])
def test_out_of_order_or_oversized_parts_are_refused_and_the_received_prefix_is_kept(tmp_path, wrong):
    f = Follower(tmp_path, max_part=4096)
    conn = f.connect()
    stream, frames = start(f, conn)
    send_parts(f, stream, DATA[:3000])
    bad = {
        "gap": SnapshotPart(stream.request_id, 4000, DATA[4000:5000]),
        "oversized": SnapshotPart(stream.request_id, 3000, DATA[3000:3000 + 4097]),
        "past_the_end": SnapshotPart(stream.request_id, 3000, DATA[3000:] + b"extra"),
        "empty": SnapshotPart(stream.request_id, 3000, b""),
    }[wrong]
    stream.send(bad)
    f.pump()
    assert isinstance(frames[-1], BadRequest)
    assert not conn.connected
    # The prefix received before stays: a new connection resumes after it.
    stream2, frames2 = start(f, f.connect())
    assert frames2 == [SnapshotOffset(stream2.request_id, 3000)]
    send_parts(f, stream2, DATA, start_at=3000)
    stream2.send(SnapshotEnd(stream2.request_id))
    f.pump()
    assert frames2[-1] == SnapshotStored(stream2.request_id, 20, 2)
    assert f.receiver.stored == [(20, 3000)]


def test_garbage_bytes_close_the_connection_and_the_partial_data_survives(tmp_path):
    f = Follower(tmp_path)
    conn = f.connect()
    stream, frames = start(f, conn)
    send_parts(f, stream, DATA[:2000])
    conn.transport.write(b"\x00\x00\x00\x05\x01\xff\xfe\xfd\xfc")  # a frame of no known type
    f.pump()
    assert not conn.connected
    stream2, frames2 = start(f, f.connect())
    assert frames2 == [SnapshotOffset(stream2.request_id, 2000)]


def test_a_different_snapshot_replaces_the_partial_one(tmp_path):
    f = Follower(tmp_path)
    stream, _frames = start(f, f.connect())
    send_parts(f, stream, DATA[:2000])
    other = os.urandom(500)
    stream2, frames2 = start(f, f.connect(), index=21, size=500, sha=hashlib.sha256(other).hexdigest())
    assert frames2 == [SnapshotOffset(stream2.request_id, 0)]
    # Frames of the abandoned transfer are refused now.
    stream.send(SnapshotPart(stream.request_id, 2000, DATA[2000:3000]))
    f.pump()
    assert not stream.conn.connected


def test_data_that_does_not_match_the_announced_sha256_is_not_stored(tmp_path):
    f = Follower(tmp_path)
    stream, frames = start(f, f.connect())
    corrupt = bytearray(DATA)
    corrupt[1234] ^= 1
    send_parts(f, stream, bytes(corrupt))
    stream.send(SnapshotEnd(stream.request_id))
    f.pump()
    assert isinstance(frames[-1], IntegrityError)
    assert f.store.latest_snapshot() is None
    assert f.receiver._partial is None
    assert not [p for p in (tmp_path / "f" / "snap").iterdir()]


def test_an_end_before_all_the_data_is_refused(tmp_path):
    f = Follower(tmp_path)
    stream, frames = start(f, f.connect())
    send_parts(f, stream, DATA[:5000])
    stream.send(SnapshotEnd(stream.request_id))
    f.pump()
    assert isinstance(frames[-1], BadRequest)
    assert f.store.latest_snapshot() is None
