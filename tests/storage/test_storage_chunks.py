"""Chunk store: content addressing, verification on read, crash leftovers, the transform seam."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storg.storage.chunks import ChunkStore
from storg.storage.errors import (
    ChunkNotFoundError,
    CorruptionError,
    DiskFullError,
    HashMismatchError,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "chunks")
    data = os.urandom(1 << 20)
    h = store.put(data)
    assert h == sha(data)
    assert (tmp_path / "chunks" / h[:2] / h).is_file()
    assert store.get(h) == data
    assert store.has(h) and store.size(h) == len(data)
    assert ChunkStore(tmp_path / "chunks").get(h) == data


def test_list_total_size_delete(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    blobs = [b"a" * 10, b"b" * 20, b"c" * 30, b""]
    hashes = {store.put(b) for b in blobs}
    assert store.put(blobs[0]) in hashes  # idempotent
    assert set(store.list()) == hashes
    assert store.total_size() == 60
    h = sha(b"b" * 20)
    assert store.delete(h) is True
    assert store.delete(h) is False
    assert not store.has(h)
    assert store.total_size() == 40
    with pytest.raises(ChunkNotFoundError, match=h):
        store.get(h)
    with pytest.raises(ChunkNotFoundError):
        store.size(h)


def test_expected_hash_mismatch_is_refused(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(HashMismatchError):
        store.put(b"payload", expected_hash=sha(b"other"))
    assert list(store.list()) == []
    assert store.put(b"payload", expected_hash=sha(b"payload")) == sha(b"payload")


def test_bad_names_never_become_paths(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    for bad in ["../etc/passwd", "AB" * 32, "ab", "g" * 64]:
        with pytest.raises(ValueError):
            store.get(bad)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_damaged_chunk_is_detected_not_served(tmp_path: Path, damage: str) -> None:
    store = ChunkStore(tmp_path)
    h = store.put(b"x" * 5000)
    f = store.path(h)
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        raw[2500] ^= 0x04
    elif damage == "truncate":
        raw = raw[:-1]
    else:
        raw += b"\0"
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=h):
        store.get(h)
    store.put(b"x" * 5000)  # a fresh copy from a peer repairs it
    assert store.get(h) == b"x" * 5000


def test_crash_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    h = store.put(b"kept")
    (tmp_path / "tmp" / f".{sha(b'lost')}.abc.tmp").write_bytes(b"lo")
    store = ChunkStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(store.list()) == [h]


def test_full_disk_leaves_no_chunk_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match="No space left"):
        store.put(b"big chunk")
    monkeypatch.undo()
    assert not store.has(sha(b"big chunk"))
    assert list((tmp_path / "tmp").iterdir()) == []


class XorTransform:
    """A stand-in for encryption at rest: stored bytes differ from the plaintext."""

    def seal(self, chunk_hash: str, plaintext: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in plaintext)

    def open(self, chunk_hash: str, stored: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in stored)


def test_transform_seam_is_used_both_ways(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, transform=XorTransform())
    h = store.put(b"secret")
    assert store.path(h).read_bytes() != b"secret"
    assert store.get(h) == b"secret"
    with pytest.raises(CorruptionError):
        ChunkStore(tmp_path).get(h)  # read without the transform: wrong bytes, refused


def test_verified_put_trusts_the_callers_hash_and_get_still_checks(tmp_path: Path) -> None:
    """``verified=True`` skips the second hash of bytes the caller just hashed; reads still verify."""
    store = ChunkStore(tmp_path)
    data = os.urandom(70_000)
    assert store.put(data, sha(data), verified=True) == sha(data)
    assert store.get(sha(data)) == data
    # Misused (bytes that do not match), it would store them under that name: get refuses them.
    other = os.urandom(100)
    store.put(other, sha(b"claimed"), verified=True)
    with pytest.raises(CorruptionError):
        store.get(sha(b"claimed"))
    # Without an expected hash there is nothing to trust: the bytes are hashed.
    assert store.put(b"plain", verified=True) == sha(b"plain")
