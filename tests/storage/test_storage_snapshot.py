"""Snapshot store: streamed round trips, damage detection, crash points."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storg.raft.types import ConfState, SnapshotMeta
from storg.storage.errors import CorruptionError, DiskFullError
from storg.storage.snapshot import SnapshotStore

META = SnapshotMeta(index=120, term=3, conf=ConfState(frozenset({"a", "b", "c"}), frozenset({"d"})))


def pieces(n: int, size: int = 50_000) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() * (size // 32) for i in range(n)]


def write_snapshot(store: SnapshotStore, meta: SnapshotMeta, parts: list[bytes]) -> None:
    w = store.begin(meta)
    for p in parts:
        w.write(p)
    assert w.commit() == meta


def read_back(store: SnapshotStore, n: int = 7777) -> bytes:
    out = bytearray()
    with store.open_latest() as r:
        while chunk := r.read(n):
            assert len(chunk) <= n
            out += chunk
    return bytes(out)


def snap_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_empty_store_has_no_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.latest() is None
    assert store.open_latest() is None


def test_streamed_round_trip(tmp_path: Path) -> None:
    parts = pieces(20)
    write_snapshot(SnapshotStore(tmp_path), META, parts)
    store = SnapshotStore(tmp_path)  # as after a restart
    assert store.latest() == META
    assert read_back(store) == b"".join(parts)
    with store.open_latest() as r:
        assert r.meta == META and r.size == sum(map(len, parts))
        r.verify()


def test_empty_data_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, SnapshotMeta(1, 1), [])
    assert read_back(store) == b""


def test_commit_replaces_the_previous_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, META, [b"old"])
    newer = SnapshotMeta(200, 4, META.conf)
    write_snapshot(store, newer, [b"new", b"er"])
    assert store.latest() == newer
    assert read_back(store) == b"newer"
    assert len(snap_files(tmp_path)) == 1


def test_abort_and_unfinished_writer_leave_the_old_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, META, [b"keep"])
    w = store.begin(SnapshotMeta(300, 5))
    w.write(b"discard")
    w.abort()
    with pytest.raises(RuntimeError), store.begin(SnapshotMeta(301, 5)) as w2:
        w2.write(b"x")
        raise RuntimeError("snapshot source failed")
    assert store.latest() == META
    assert read_back(store) == b"keep"
    assert len(snap_files(tmp_path)) == 1


def test_crash_before_rename_leaves_old_snapshot_and_temp_is_removed(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, META, [b"durable"])
    w = store.begin(SnapshotMeta(500, 6))
    w.write(b"half written")
    # The process dies here: no commit, no abort.  The temp file stays.
    assert len(snap_files(tmp_path)) == 2
    store = SnapshotStore(tmp_path)
    assert len(snap_files(tmp_path)) == 1
    assert store.latest() == META
    assert read_back(store) == b"durable"


def test_crash_after_rename_before_old_removed_picks_newest(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_snapshot(SnapshotStore(a), META, [b"old"])
    newer = SnapshotMeta(121, 3, META.conf)
    write_snapshot(SnapshotStore(b), newer, [b"new"])
    for p in b.iterdir():
        p.rename(a / p.name)
    store = SnapshotStore(a)
    assert store.latest() == newer
    assert read_back(store) == b"new"


def _only_file(d: Path) -> Path:
    (f,) = list(d.iterdir())
    return f


@pytest.mark.parametrize("where", ["header", "data start", "data end"])
def test_flipped_bit_is_detected(tmp_path: Path, where: str) -> None:
    store = SnapshotStore(tmp_path)
    parts = pieces(4)
    write_snapshot(store, META, parts)
    f = _only_file(tmp_path)
    raw = bytearray(f.read_bytes())
    size = sum(map(len, parts))
    offset = {"header": 10, "data start": len(raw) - size, "data end": len(raw) - 1}[where]
    raw[offset] ^= 0x01
    f.write_bytes(bytes(raw))
    if where == "header":
        with pytest.raises(CorruptionError, match=f.name):
            store.latest()
        return
    with store.open_latest() as r, pytest.raises(CorruptionError, match="SHA-256"):
        r.verify()
    with pytest.raises(CorruptionError, match=f.name):
        read_back(store)


def test_truncated_snapshot_is_detected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, META, pieces(2))
    f = _only_file(tmp_path)
    os.truncate(f, f.stat().st_size - 1)
    with pytest.raises(CorruptionError, match="header says"):
        store.open_latest()


def test_full_disk_during_write_keeps_the_old_snapshot(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path)
    write_snapshot(store, META, [b"safe"])
    w = store.begin(SnapshotMeta(900, 9))
    w.write(b"some")

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError):
        w.write(b"more")
    monkeypatch.undo()
    assert len(snap_files(tmp_path)) == 1
    assert store.latest() == META
    assert read_back(store) == b"safe"
