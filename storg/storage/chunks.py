"""The content-addressed chunk store: file bytes, named by their SHA-256.

A chunk lives at ``<root>/ab/abcdef...`` (the node uses ``data_dir/chunks``
as the root): the first two hex digits fan the files out over 256
directories.  Writes go to ``<root>/tmp/`` first, are fsynced, renamed into
place, and the destination directory is fsynced; a crash leaves either no
chunk or a whole one, and temporary files are removed when the store opens.

Reading re-hashes the bytes and raises :class:`CorruptionError` rather than
return a single wrong byte: the name *is* the checksum.

The bytes on disk pass through a :class:`ChunkTransform` (identity by
default).  It is the seam for authenticated encryption at rest: a transform
that seals with an AEAD keyed per cluster and uses the hash as associated
data fits without touching the store.

Threads: every method does blocking I/O and may run in a thread pool.
Unlike the log, concurrent calls are safe: temporary names are unique and
rename is atomic, so two puts of the same chunk both leave a whole chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from storg.storage.errors import ChunkNotFoundError, CorruptionError, HashMismatchError
from storg.storage.fsutil import (
    disk_errors,
    ensure_dir,
    fsync_dir,
    remove_temp_files,
    temp_path,
    write_all,
)

_HASH = re.compile(r"^[0-9a-f]{64}$")
_FAN = re.compile(r"^[0-9a-f]{2}$")


class ChunkTransform(Protocol):
    """Maps a chunk's plaintext to the bytes stored on disk and back."""

    def seal(self, chunk_hash: str, plaintext: bytes) -> bytes: ...

    def open(self, chunk_hash: str, stored: bytes) -> bytes: ...


class IdentityTransform:
    """Stores chunks as they are (no encryption at rest)."""

    def seal(self, chunk_hash: str, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, chunk_hash: str, stored: bytes) -> bytes:
        return stored


def _check_hash(chunk_hash: str) -> str:
    """Refuse anything but 64 lowercase hex digits: names become paths."""
    if not isinstance(chunk_hash, str) or not _HASH.match(chunk_hash):
        raise ValueError(f"not a SHA-256 hex digest: {chunk_hash!r}")
    return chunk_hash


class ChunkStore:
    """Chunks under ``root``, each named by the SHA-256 of its plaintext."""

    def __init__(self, root: str | os.PathLike[str], transform: ChunkTransform | None = None) -> None:
        self.root = ensure_dir(root)
        self._tmp = ensure_dir(self.root / "tmp")
        self._transform = transform or IdentityTransform()
        remove_temp_files(self._tmp)

    def path(self, chunk_hash: str) -> Path:
        """Where the chunk named ``chunk_hash`` lives (whether or not it exists)."""
        _check_hash(chunk_hash)
        return self.root / chunk_hash[:2] / chunk_hash

    def put(self, data: bytes, expected_hash: str | None = None, durable: bool = True,
            verified: bool = False) -> str:
        """Store ``data`` durably and return its SHA-256 hex digest.

        With ``expected_hash``, data that hashes differently is refused
        (:class:`HashMismatchError`) and nothing is written.  Storing a chunk
        already present and intact is a no-op; a damaged copy is replaced.

        ``verified=True`` (with ``expected_hash``) says the caller hashed
        these very bytes in this process just before: hashing a megabyte
        again is the largest cost of a put after the fsyncs, so it is
        skipped.  Bytes from another process must never be stored this way.

        ``durable=False`` skips both fsyncs, for bytes that are already
        durable elsewhere (a small file carried in a Raft log entry); the
        caller makes them durable later, in one batch, with :meth:`sync`.
        A crash before that may leave no file or a damaged one, which
        ``get`` detects.
        """
        if verified and expected_hash is not None:
            digest = _check_hash(expected_hash)
        else:
            digest = hashlib.sha256(data).hexdigest()
        if expected_hash is not None and _check_hash(expected_hash) != digest:
            raise HashMismatchError(f"chunk data hashes to {digest}, expected {expected_hash}")
        if self._intact(digest):
            return digest
        final = self.path(digest)
        tmp = temp_path(self._tmp / digest)
        with disk_errors(f"cannot store chunk {digest}"):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    write_all(fd, self._transform.seal(digest, data))
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if not final.parent.is_dir():
                    ensure_dir(final.parent)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if durable:
                fsync_dir(final.parent)
        return digest

    def sync(self, hashes: Iterable[str]) -> None:
        """Make chunks stored with ``durable=False`` durable: fsync each file, then each folder once."""
        folders = set()
        with disk_errors("cannot sync chunks"):
            for chunk_hash in hashes:
                path = self.path(chunk_hash)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue  # collected meanwhile
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                folders.add(path.parent)
            for folder in sorted(folders):
                fsync_dir(folder)

    def _intact(self, chunk_hash: str) -> bool:
        try:
            self.get(chunk_hash)
        except (ChunkNotFoundError, CorruptionError):
            return False
        return True

    def get(self, chunk_hash: str) -> bytes:
        """The chunk's bytes, verified against its name.

        Raises :class:`ChunkNotFoundError` if absent and
        :class:`CorruptionError` if the stored bytes do not hash to the name.
        """
        path = self.path(chunk_hash)
        with disk_errors(f"cannot read chunk {chunk_hash}"):
            try:
                stored = path.read_bytes()
            except FileNotFoundError:
                raise ChunkNotFoundError(f"no chunk {chunk_hash} in {self.root}") from None
        try:
            data = self._transform.open(chunk_hash, stored)
        except Exception as e:  # an authenticating transform rejects tampering
            raise CorruptionError(path, None, f"stored chunk cannot be opened: {e}") from e
        if hashlib.sha256(data).hexdigest() != chunk_hash:
            raise CorruptionError(path, None, "SHA-256 of the stored chunk does not match its name")
        return data

    def has(self, chunk_hash: str) -> bool:
        """Whether a chunk file exists (not verified: use get for that)."""
        return self.path(chunk_hash).is_file()

    def size(self, chunk_hash: str) -> int:
        """Bytes the chunk occupies on disk (its length, with the identity transform)."""
        path = self.path(chunk_hash)
        with disk_errors(f"cannot stat chunk {chunk_hash}"):
            try:
                return path.stat().st_size
            except FileNotFoundError:
                raise ChunkNotFoundError(f"no chunk {chunk_hash} in {self.root}") from None

    def delete(self, chunk_hash: str) -> bool:
        """Remove a chunk durably; False if it was not there."""
        path = self.path(chunk_hash)
        with disk_errors(f"cannot delete chunk {chunk_hash}"):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(path.parent)
        return True

    def list(self) -> Iterator[str]:
        """Every stored chunk hash, lazily (the store may hold millions)."""
        with disk_errors(f"cannot list chunks in {self.root}"):
            for fan in sorted(os.listdir(self.root)):
                if not _FAN.match(fan):
                    continue
                for name in sorted(os.listdir(self.root / fan)):
                    if _HASH.match(name) and name.startswith(fan):
                        yield name

    def total_size(self) -> int:
        """Bytes all chunks occupy on disk."""
        total = 0
        with disk_errors(f"cannot measure chunks in {self.root}"):
            for h in self.list():
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    total += (self.root / h[:2] / h).stat().st_size
        return total
