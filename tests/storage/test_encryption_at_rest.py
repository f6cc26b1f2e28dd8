"""Encryption at rest in the storage layer: the key file, sealed chunks, log records, snapshots,
authenticated identity and hard state, and the data_dir's modes (issue 16)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct

import pytest
from google_crc32c import value as crc32c

from storg.raft.types import Entry, EntryType, HardState, SnapshotMeta
from storg.storage.chunks import ChunkStore
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.hardstate import HardStateStore
from storg.storage.identity import load_or_create
from storg.storage.keys import (
    KeyFileError,
    UnknownKeyError,
    init_key_file,
    load_key_file,
    remove_key,
    rotate_key_file,
)
from storg.storage.snapshot import FRAME_BYTES, SnapshotStore
from storg.storage.wal import WriteAheadLog

MARKER = b"the-secret-marker-" * 8


@pytest.fixture
def ring(tmp_path):
    return init_key_file(tmp_path / "cluster.key")


def all_bytes(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# -- the key file -------------------------------------------------------------------


def test_key_file_is_0600_and_rotation_adds_an_active_key(tmp_path):
    path = tmp_path / "k"
    first = init_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (first.active, sorted(first.keys)) == (1, [1])
    second = rotate_key_file(path)
    assert (second.active, sorted(second.keys)) == (2, [1, 2])
    assert second.cluster_secret == first.cluster_secret  # chunk names survive a rotation
    assert second.chunk_name("a" * 64) == first.chunk_name("a" * 64)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="active key"):
        remove_key(path, 2)
    assert sorted(remove_key(path, 1).keys) == [2]
    with pytest.raises(KeyFileError, match="exists"):
        init_key_file(path)


@pytest.mark.parametrize("problem", ["missing", "exposed", "garbage", "short"])
def test_a_bad_key_file_is_one_line_naming_it(tmp_path, problem):
    path = tmp_path / "k"
    if problem != "missing":
        init_key_file(path)
    if problem == "exposed":
        path.chmod(0o640)
    elif problem == "garbage":
        path.write_text("{nope")
    elif problem == "short":
        obj = json.loads(path.read_text())
        obj["keys"][0]["key"] = "AAAA"
        path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError) as info:
        load_key_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_record_sealed_with_a_removed_key_names_the_key_id_and_file(tmp_path):
    path = tmp_path / "k"
    init_key_file(path)
    old = load_key_file(path)
    blob = old.seal(b"data", b"aad")
    rotate_key_file(path)
    new = remove_key(path, 1)
    with pytest.raises(UnknownKeyError, match=f"key id 1 not in key file {path}"):
        new.open(blob, b"aad", "x")


def test_sealing_never_repeats_a_subkey_and_rejects_tampering(ring):
    a, b = ring.seal(b"same", b"aad"), ring.seal(b"same", b"aad")
    assert a != b  # fresh salt per record
    assert ring.open(a, b"aad", "x") == b"same"
    with pytest.raises(CorruptionError):
        ring.open(a, b"other aad", "x")
    flipped = bytearray(a)
    flipped[-1] ^= 1
    with pytest.raises(CorruptionError):
        ring.open(bytes(flipped), b"aad", "x")


# -- chunks ---------------------------------------------------------------------------


def test_sealed_chunks_hide_content_and_names_and_read_back(tmp_path, ring):
    store = ChunkStore(tmp_path / "chunks", keyring=ring)
    data = MARKER * 100
    h = hashlib.sha256(data).hexdigest()
    assert store.put(data) == h
    assert store.get(h) == data
    assert list(store.list()) == [h]
    raw = all_bytes(tmp_path / "chunks")
    names = [p.name for p in (tmp_path / "chunks").rglob("*")]
    assert MARKER not in raw and h.encode() not in raw and bytes.fromhex(h) not in raw
    assert h not in names and store.path(h).name == ring.chunk_name(h)
    # A second cluster (another secret) names the same chunk differently.
    other = init_key_file(tmp_path / "other.key")
    assert other.chunk_name(h) != ring.chunk_name(h)
    # A fresh store (restart) learns the hash from the header.
    assert list(ChunkStore(tmp_path / "chunks", keyring=ring).list()) == [h]


def test_a_flipped_bit_in_a_sealed_chunk_is_corruption_and_put_repairs_it(tmp_path, ring):
    store = ChunkStore(tmp_path / "chunks", keyring=ring)
    data = os.urandom(5000)
    h = store.put(data)
    path = store.path(h)
    for offset in (5, 10, 25, 80, 4000):  # key id, salt, tag, sealed hash, body
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0x10
        path.write_bytes(bytes(raw))
        with pytest.raises(CorruptionError):
            store.get(h)
        store.put(data)  # a good copy (from another holder) replaces a damaged one
        assert store.get(h) == data


def test_a_chunk_under_an_unknown_key_is_never_replaced(tmp_path):
    path = tmp_path / "k"
    old = init_key_file(path)
    store = ChunkStore(tmp_path / "chunks", keyring=old)
    data = b"x" * 100
    h = store.put(data)
    before = store.path(h).read_bytes()
    rotate_key_file(path)
    new = remove_key(path, 1)
    store2 = ChunkStore(tmp_path / "chunks", keyring=new)
    with pytest.raises(UnknownKeyError):
        store2.get(h)
    with pytest.raises(UnknownKeyError):
        store2.put(data)
    assert store2.path(h).read_bytes() == before
    assert list(store2.list()) == []  # unreadable: not listed, so never taken for an orphan


# -- the log ----------------------------------------------------------------------------


def entries(first, n, payload=MARKER):
    return [Entry(1, i, EntryType.NORMAL, payload + str(i).encode()) for i in range(first, first + n)]


def test_sealed_log_records_hide_payloads_and_read_back(tmp_path, ring):
    wal = WriteAheadLog.open(tmp_path / "wal", keyring=ring, fill_bytes=0)
    wal.append(entries(1, 1))
    wal.append(entries(2, 5))
    wal.truncate(4)
    wal.append(entries(4, 2, b"again"))
    want = wal.read_all()
    wal.close()
    assert MARKER not in all_bytes(tmp_path / "wal")
    again = WriteAheadLog.open(tmp_path / "wal", keyring=ring)
    assert again.read_all() == want and [e.index for e in want] == [1, 2, 3, 4, 5]
    again.close()


def test_a_sealed_log_record_altered_with_a_valid_crc_is_corruption(tmp_path, ring):
    wal = WriteAheadLog.open(tmp_path / "wal", keyring=ring, fill_bytes=0)
    wal.append(entries(1, 3))
    wal.close()
    seg = next((tmp_path / "wal").glob("*.wal"))
    raw = bytearray(seg.read_bytes())
    raw[-10] ^= 0x01  # inside the sealed data; then fix the CRC so only the tag can tell
    raw[-4:] = struct.pack(">I", crc32c(bytes(raw[:-4])))
    seg.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError):
        WriteAheadLog.open(tmp_path / "wal", keyring=ring).read_all()


def test_a_sealed_log_still_cuts_a_torn_tail(tmp_path, ring):
    wal = WriteAheadLog.open(tmp_path / "wal", keyring=ring, fill_bytes=0)
    wal.append(entries(1, 2))
    wal.append(entries(3, 2))
    wal.close()
    seg = next((tmp_path / "wal").glob("*.wal"))
    seg.write_bytes(seg.read_bytes()[:-7])
    again = WriteAheadLog.open(tmp_path / "wal", keyring=ring)
    assert [e.index for e in again.read_all()] == [1, 2]
    again.close()


# -- snapshots ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, FRAME_BYTES, 2 * FRAME_BYTES + 17])
def test_sealed_snapshots_hide_data_and_read_back(tmp_path, ring, size):
    store = SnapshotStore(tmp_path / "snap", keyring=ring)
    data = (MARKER * (size // len(MARKER) + 1))[:size]
    meta = SnapshotMeta(index=7, term=2)
    w = store.begin(meta)
    for i in range(0, size, 300_000):
        w.write(data[i:i + 300_000])
    w.commit()
    assert size < len(MARKER) or MARKER not in all_bytes(tmp_path / "snap")
    with store.open_latest() as r:
        assert r.size == size
        got = b""
        while chunk := r.read(100_000):
            got += chunk
    assert got == data


def test_a_flipped_bit_in_a_sealed_snapshot_is_corruption(tmp_path, ring):
    store = SnapshotStore(tmp_path / "snap", keyring=ring)
    w = store.begin(SnapshotMeta(index=3, term=1))
    w.write(MARKER * 1000)
    w.commit()
    path = next((tmp_path / "snap").glob("*.snap"))
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError), store.open_latest() as r:
        while r.read():
            pass


def test_a_sealed_snapshot_needs_the_key(tmp_path, ring):
    store = SnapshotStore(tmp_path / "snap", keyring=ring)
    store.begin(SnapshotMeta(index=3, term=1)).commit()
    with pytest.raises(StorageError, match="sealed"):
        SnapshotStore(tmp_path / "snap").latest()


# -- identity, hard state, modes ------------------------------------------------------------


def test_identity_refuses_a_wrong_missing_or_newly_added_key(tmp_path, ring):
    d = tmp_path / "data"
    load_or_create(d, "n1", "c1", ring)
    assert load_or_create(d, "n1", "c1", ring).encryption == ring.fingerprint()
    with pytest.raises(KeyFileError, match="no encryption.key_file"):
        load_or_create(d, "n1", "c1", None)
    other = init_key_file(tmp_path / "other.key")
    with pytest.raises(KeyFileError, match=str(tmp_path / "other.key")):
        load_or_create(d, "n1", "c1", other)
    plain = tmp_path / "plain"
    load_or_create(plain, "n1", "c1")
    with pytest.raises(StorageError, match="plaintext"):
        load_or_create(plain, "n1", "c1", ring)


def test_an_altered_identity_is_refused(tmp_path, ring):
    d = tmp_path / "data"
    load_or_create(d, "n1", "c1", ring)
    obj = json.loads((d / "identity").read_text())
    obj["instance_id"] = "0" * 32
    (d / "identity").write_text(json.dumps(obj))
    with pytest.raises(CorruptionError, match="MAC"):
        load_or_create(d, "n1", "c1", ring)


def test_hard_state_is_authenticated(tmp_path, ring):
    store = HardStateStore(tmp_path, ring)
    store.save(HardState(term=5, vote="n2", commit=3))
    assert HardStateStore(tmp_path, ring).load() == HardState(term=5, vote="n2", commit=3)
    raw = bytearray(store.path.read_bytes())
    raw[-1] ^= 1
    store.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="MAC"):
        HardStateStore(tmp_path, ring).load()


def test_data_dir_is_0700_files_0600_and_a_writable_one_is_refused(tmp_path, ring):
    d = tmp_path / "data"
    load_or_create(d, "n1", "c1", ring)
    ChunkStore(d / "chunks", keyring=ring).put(b"abc")
    wal = WriteAheadLog.open(d / "wal", keyring=ring)
    wal.append(entries(1, 1))
    wal.close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for p in d.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    d.chmod(0o777)
    with pytest.raises(StorageError, match="writable by other users"):
        load_or_create(d, "n1", "c1", ring)
    d.chmod(0o755)  # an older storg's data_dir: tightened, not refused
    load_or_create(d, "n1", "c1", ring)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


# -- the re-encryption pass ------------------------------------------------------------------


def test_reseal_moves_every_record_to_the_active_key_so_the_old_one_can_go(tmp_path):
    from storg.storage.logstore import DiskLogStore

    key = tmp_path / "k"
    old = init_key_file(key)
    d = tmp_path / "data"
    store = DiskLogStore(d, keyring=old, segment_bytes=4096)
    store.load()
    store.persist(None, entries(1, 30), HardState(term=1, vote="n1", commit=0))
    w = store.begin_snapshot(SnapshotMeta(index=10, term=1))
    w.write(MARKER * 20000)
    store.commit_snapshot(w)
    store.persist(None, entries(31, 1), None)
    store.wal.truncate(31)  # a marker record and a superseded record in the tail
    store.persist(None, entries(31, 2, b"new"), None)
    chunks = ChunkStore(d / "chunks", keyring=old)
    hashes = [chunks.put(MARKER + bytes([i])) for i in range(3)]
    want = store.wal.read_all()
    store.close()

    new = rotate_key_file(key)
    store = DiskLogStore(d, keyring=new, segment_bytes=4096)
    store.load()
    store.persist(None, entries(33, 2), None)  # under key 2 already
    assert store.reseal() > 0
    assert store.reseal() == 0  # idempotent
    want = want + entries(33, 2)
    assert store.wal.read_all() == want
    store.persist(None, entries(35, 1), None)  # the tail still takes appends after its rewrite
    store.close()
    chunks = ChunkStore(d / "chunks", keyring=new)
    assert [chunks.reseal(h) for h in hashes] == [True] * 3
    assert [chunks.reseal(h) for h in hashes] == [False] * 3

    only_new = remove_key(key, 1)
    store = DiskLogStore(d, keyring=only_new, segment_bytes=4096)
    state = store.load()
    assert [e.index for e in state.entries][-1] == 35
    with store.open_snapshot() as r:
        got = b""
        while chunk := r.read():
            got += chunk
    assert got == MARKER * 20000
    store.close()
    chunks = ChunkStore(d / "chunks", keyring=only_new)
    assert [chunks.get(h) for h in hashes] == [MARKER + bytes([i]) for i in range(3)]
    assert sorted(chunks.list()) == sorted(hashes)


def test_the_log_store_hands_back_the_entries_a_snapshot_covers_but_the_log_kept(tmp_path):
    from storg.storage.logstore import DiskLogStore

    store = DiskLogStore(tmp_path)
    store.load()
    store.persist(None, entries(1, 5), HardState(term=1))
    assert [e.index for e in store.entries_covered(3)] == [1, 2, 3]
    assert [e.index for e in store.entries_covered(9)] == [1, 2, 3, 4, 5]
    assert store.entries_covered(0) == []
    store.close()


def test_stale_chunks_names_every_file_under_an_old_key(tmp_path):
    key = tmp_path / "k"
    old = init_key_file(key)
    first = ChunkStore(tmp_path / "chunks", keyring=old)
    a, b = first.put(b"a" * 10), first.put(b"b" * 10)
    new = rotate_key_file(key)
    store = ChunkStore(tmp_path / "chunks", keyring=new)
    c = store.put(b"c" * 10)
    assert sorted(store.stale_chunks()) == sorted([a, b])
    assert store.reseal(a) and not store.reseal(c)
    assert store.stale_chunks() == [b]
    assert ChunkStore(tmp_path / "plain").stale_chunks() == []
