"""Chunks stored without fsync (small files carried by the log) become durable in one batch."""

from __future__ import annotations

import hashlib
import os

from storg.storage.chunks import ChunkStore


def test_put_without_durability_skips_fsync_and_sync_fsyncs_each_file_and_folder(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path / "chunks")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    blobs = [os.urandom(100) for _ in range(5)]
    hashes = [store.put(b, durable=False) for b in blobs]
    folders = {h[:2] for h in hashes}
    # Only the creation of each new fan-out folder is made durable (once per folder, ever).
    assert len(synced) == len(folders)
    assert [store.get(h) for h in hashes] == blobs
    synced.clear()
    store.sync(hashes + [hashlib.sha256(b"never stored").hexdigest()])
    assert len(synced) == len(hashes) + len(folders)


def test_a_durable_put_fsyncs_file_and_folder(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path / "chunks")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.put(b"abc")
    assert len(synced) == 3  # the new fan-out folder, the file, the folder after the rename

