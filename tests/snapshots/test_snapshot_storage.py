"""Snapshot data on disk: the frame format, the log store's snapshot rules, a joiner's membership."""

from __future__ import annotations

import pytest

from storg.fsm.errors import SnapshotFormatError
from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.snapshot import read_snapshot
from storg.raft.types import ConfState, Entry, HardState, SnapshotMeta
from storg.server.snapshots.data import load_snapshot, read_frames, write_frames
from storg.storage.errors import StorageError
from storg.storage.logstore import DiskLogStore
from storg.wire import CODEC
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef

CONF = ConfState(voters=frozenset({"a", "b", "c"}))


def small_state(files: int) -> FileStoreStateMachine:
    fsm = FileStoreStateMachine()
    for i in range(files):
        digest = f"{i:064x}"
        cmd = PutFileCommand(0, 0, i, f"/x/{i}", 10, digest, (ChunkRef(digest, 10, ("a",)),))
        fsm.apply(Entry(index=i + 1, term=1, data=CODEC.encode(cmd)))
    return fsm


def write_snapshot(store: DiskLogStore, meta: SnapshotMeta, fsm: FileStoreStateMachine) -> int:
    writer = store.begin_snapshot(meta)
    size = write_frames(writer, fsm.freeze().frames())
    assert store.commit_snapshot(writer)
    return size


def test_frames_round_trip_through_a_snapshot_file(tmp_path):
    store = DiskLogStore(tmp_path)
    store.load()
    fsm = small_state(500)
    size = write_snapshot(store, SnapshotMeta(500, 1, CONF), fsm)
    assert size > 500 * 50
    copy = FileStoreStateMachine()
    copy.install(load_snapshot(store))
    assert copy.digest() == fsm.digest()


def test_data_cut_inside_a_frame_is_refused(tmp_path):
    store = DiskLogStore(tmp_path)
    store.load()
    frames = list(small_state(3).freeze().frames())
    writer = store.begin_snapshot(SnapshotMeta(3, 1, CONF))
    size = write_frames(writer, frames)
    writer.write(b"\x00\x00\x01\x00abc")  # a length prefix promising more than there is
    store.commit_snapshot(writer)
    with store.open_snapshot() as reader:
        assert reader.size == size + 7
        with pytest.raises(SnapshotFormatError):
            read_snapshot(read_frames(reader))


def test_an_automatic_snapshot_never_replaces_a_newer_one(tmp_path):
    store = DiskLogStore(tmp_path)
    store.load()
    write_snapshot(store, SnapshotMeta(50, 2, CONF), small_state(2))
    late = store.begin_snapshot(SnapshotMeta(40, 2, CONF))
    assert not store.commit_snapshot(late)
    assert store.latest_snapshot().index == 50
    received = store.begin_snapshot(SnapshotMeta(45, 2, CONF))
    store.stage_snapshot(received)
    assert store.latest_snapshot().index == 50  # staged: current only once the core adopts it
    store.persist(SnapshotMeta(45, 2, CONF), [], None)
    assert store.latest_snapshot().index == 45


def test_installing_a_snapshot_whose_data_is_missing_is_a_storage_error(tmp_path):
    store = DiskLogStore(tmp_path)
    store.load()
    with pytest.raises(StorageError):
        store.persist(SnapshotMeta(9, 1, CONF), [], None)


def test_an_installed_snapshot_restarts_the_log_after_it(tmp_path):
    store = DiskLogStore(tmp_path)
    store.load()
    store.persist(None, [Entry(index=i, term=1) for i in range(1, 4)], HardState(1, "a", 3))
    write_snapshot(store, SnapshotMeta(20, 2, CONF), small_state(2))
    store.persist(SnapshotMeta(20, 2, CONF), [Entry(index=21, term=2)], None)
    store.close()
    again = DiskLogStore(tmp_path)
    state = again.load()
    assert state.snapshot.index == 20
    assert [e.index for e in state.entries] == [21]


def test_a_joiners_index_zero_membership_survives_a_restart(tmp_path):
    store = DiskLogStore(tmp_path)
    assert store.load().snapshot == SnapshotMeta()
    store.persist(SnapshotMeta(0, 0, CONF), [Entry(index=1, term=1)], HardState(1, "", 0))
    store.close()
    again = DiskLogStore(tmp_path)
    state = again.load()
    assert state.snapshot == SnapshotMeta(0, 0, CONF)
    assert [e.index for e in state.entries] == [1]
    assert load_snapshot(again) is None  # membership only: no state to restore
