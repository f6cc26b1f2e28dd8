"""Snapshot file names: any u64 index and term (20 digits), older 16-digit names still read.

Regression: an index of 10**16 or more made a 17-digit name that the store's
name pattern did not match, so committing it deleted the real snapshot and
left none the node could start from.
"""

from __future__ import annotations

import pytest

from storg.raft.types import ConfState, SnapshotMeta
from storg.storage.errors import StorageError
from storg.storage.snapshot import SnapshotStore, snapshot_name

U64_MAX = (1 << 64) - 1

CONF = ConfState(frozenset({"a", "b", "c"}))


def write(store: SnapshotStore, meta: SnapshotMeta, data: bytes) -> None:
    w = store.begin(meta)
    w.write(data)
    w.commit()


def read_all(store: SnapshotStore) -> bytes:
    with store.open_latest() as r:
        out = b""
        while chunk := r.read():
            out += chunk
        return out


@pytest.mark.parametrize("index, term", [(10**16, 3), (U64_MAX, U64_MAX), (10**19, 10**16)])
def test_a_huge_index_is_stored_and_read_back_and_replaces_the_old_snapshot(tmp_path, index, term):
    store = SnapshotStore(tmp_path)
    write(store, SnapshotMeta(500, 2, CONF), b"old")
    write(store, SnapshotMeta(index, term, CONF), b"new")
    assert store.latest() == SnapshotMeta(index, term, CONF)
    assert read_all(store) == b"new"
    assert [p.name for p in tmp_path.iterdir()] == [snapshot_name(SnapshotMeta(index, term, CONF))]
    # And after a restart of the store.
    again = SnapshotStore(tmp_path)
    assert again.latest() == SnapshotMeta(index, term, CONF)


def test_an_old_16_digit_name_is_still_read_and_replaced_by_a_20_digit_one(tmp_path):
    store = SnapshotStore(tmp_path)
    write(store, SnapshotMeta(7, 1, CONF), b"v1")
    (new_name,) = [p.name for p in tmp_path.iterdir()]
    old_name = f"snapshot-{7:016d}-{1:016d}.snap"
    (tmp_path / new_name).rename(tmp_path / old_name)  # as 0.4.0 named it
    assert SnapshotStore(tmp_path).latest() == SnapshotMeta(7, 1, CONF)
    write(store, SnapshotMeta(9, 1, CONF), b"v2")
    assert store.latest() == SnapshotMeta(9, 1, CONF)
    assert [p.name for p in tmp_path.iterdir()] == [snapshot_name(SnapshotMeta(9, 1, CONF))]
    assert len(snapshot_name(SnapshotMeta(9, 1, CONF))) == len("snapshot--.snap") + 40


@pytest.mark.parametrize("meta", [SnapshotMeta(U64_MAX + 1, 1, CONF), SnapshotMeta(5, -1, CONF)])
def test_an_index_or_term_that_is_no_u64_is_refused_before_anything_is_written(tmp_path, meta):
    store = SnapshotStore(tmp_path)
    write(store, SnapshotMeta(5, 1, CONF), b"kept")
    with pytest.raises(StorageError, match="not a u64"):
        store.begin(meta)
    assert store.latest() == SnapshotMeta(5, 1, CONF) and read_all(store) == b"kept"
    assert len(list(tmp_path.iterdir())) == 1
