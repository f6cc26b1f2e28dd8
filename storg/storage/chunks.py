"""The content-addressed chunk store: file bytes, named by their SHA-256.

A chunk lives at ``<root>/ab/abcdef...`` (the node uses ``data_dir/chunks``
as the root): the first two hex digits fan the files out over 256
directories.  Writes go to ``<root>/tmp/`` first, are fsynced, renamed into
place, and the destination directory is fsynced; a crash leaves either no
chunk or a whole one, and temporary files are removed when the store opens.

Reading re-hashes the bytes and raises :class:`CorruptionError` rather than
return a single wrong byte: the name *is* the checksum.

The bytes on disk pass through a :class:`ChunkTransform` (identity by
default).  With encryption at rest (a :class:`~storg.storage.keys.Keyring`)
a chunk is *sealed* instead, and its file is named not by its SHA-256 but
by ``Keyring.chunk_name`` (an HMAC keyed from the cluster secret), so a
disk says nothing about which content it holds; the API above the store
still speaks plain SHA-256 hashes, which the metadata, the wire and the
client's check use.  A sealed chunk file::

    magic "SGC\x01" | key id u32 | salt 16 | tag 4 | AES-GCM(sha256, part 0) 48
    | AES-GCM(plaintext, part 1)

both parts authenticated with the magic, key id, salt and file name as
associated data.  The first part (76 bytes in all) lets :meth:`list` learn
a file's SHA-256 without reading the chunk; the second is the chunk.  A
read checks both tags and that the header names the hash asked for; the
SHA-256 is not computed again, since the tag already proves these are the
bytes sealed, and the writer checked them against the hash before sealing
(a second walk over every megabyte would cost more than the decryption).

Threads: every method does blocking I/O and may run in a thread pool.
Unlike the log, concurrent calls are safe: temporary names are unique and
rename is atomic, so two puts of the same chunk both leave a whole chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from storg.storage.errors import ChunkNotFoundError, CorruptionError, HashMismatchError, StorageError
from storg.storage.fsutil import (
    atomic_write,
    disk_errors,
    ensure_dir,
    fsync_dir,
    remove_temp_files,
    temp_path,
    write_all,
)
from storg.storage.keys import HEAD_BYTES, Keyring, UnknownKeyError, open_part, seal_part

SEALED_MAGIC = b"SGC\x01"
_SEALED_HEAD = len(SEALED_MAGIC) + HEAD_BYTES
SEALED_HEADER_BYTES = _SEALED_HEAD + 32 + 16
"""Bytes before the sealed chunk: magic, key id, salt and the sealed SHA-256."""

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


def open_sealed(keyring: Keyring, path: Path, name: str, stored: bytes,
                chunk_hash: str | None = None) -> tuple[str, bytes]:
    """``(sha256, plaintext)`` of a sealed chunk file named ``name`` whose bytes are ``stored``.

    Given only the first :data:`SEALED_HEADER_BYTES`, the plaintext is
    ``b""``: that is how :meth:`ChunkStore.list` (and tests) learn a file's
    hash.  CorruptionError for anything altered; UnknownKeyError for a key
    id the key file lacks.
    """
    if len(stored) < SEALED_HEADER_BYTES or not stored.startswith(SEALED_MAGIC):
        raise CorruptionError(path, 0, "not a sealed chunk (bad magic or cut short)")
    prefix = stored[:_SEALED_HEAD]
    aad = prefix + name.encode("ascii")
    aead = keyring.context_of(prefix[len(SEALED_MAGIC):], path)
    view = memoryview(stored)
    digest = open_part(aead, 0, view[_SEALED_HEAD:SEALED_HEADER_BYTES], aad, path).hex()
    if chunk_hash is not None and digest != chunk_hash:
        raise CorruptionError(path, None, "sealed chunk holds another hash than its name says")
    body = view[SEALED_HEADER_BYTES:]
    return digest, open_part(aead, 1, body, aad, path) if body else b""


class ChunkStore:
    """Chunks under ``root``, each named by the SHA-256 of its plaintext (or its keyed name)."""

    def __init__(self, root: str | os.PathLike[str], transform: ChunkTransform | None = None,
                 keyring: Keyring | None = None) -> None:
        self.root = ensure_dir(root)
        self._tmp = ensure_dir(self.root / "tmp")
        self._transform = transform or IdentityTransform()
        self.keyring = keyring
        self._hash_of: dict[str, str] = {}
        """Sealed stores: file name -> SHA-256, learned at put, get and list (names are keyed)."""
        remove_temp_files(self._tmp)

    def name(self, chunk_hash: str) -> str:
        """The file name of the chunk ``chunk_hash``: the hash itself, or its keyed name when sealed."""
        _check_hash(chunk_hash)
        if self.keyring is None:
            return chunk_hash
        return self.keyring.chunk_name(chunk_hash)

    def path(self, chunk_hash: str) -> Path:
        """Where the chunk named ``chunk_hash`` lives (whether or not it exists)."""
        name = self.name(chunk_hash)
        return self.root / name[:2] / name

    def _seal(self, chunk_hash: str, name: str, data: bytes) -> list[bytes]:
        assert self.keyring is not None
        head, aead = self.keyring.new_context()
        prefix = SEALED_MAGIC + head
        aad = prefix + name.encode("ascii")
        return [prefix, seal_part(aead, 0, bytes.fromhex(chunk_hash), aad), seal_part(aead, 1, data, aad)]

    def _open_sealed(self, path: Path, name: str, stored: bytes, chunk_hash: str | None) -> tuple[str, bytes]:
        assert self.keyring is not None
        return open_sealed(self.keyring, path, name, stored, chunk_hash)

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
        if self.keyring is not None:
            parts: list[bytes] = self._seal(digest, final.name, data)
        else:
            parts = [self._transform.seal(digest, data)]
        tmp = temp_path(self._tmp / digest)
        with disk_errors(f"cannot store chunk {digest}"):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    for part in parts:
                        write_all(fd, part)
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
        if self.keyring is not None:
            self._hash_of[final.name] = digest
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
        except UnknownKeyError:
            raise  # not damage: never replace what this node cannot read
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
        if self.keyring is not None:
            data = self._open_sealed(path, path.name, stored, chunk_hash)[1]
            self._hash_of[path.name] = chunk_hash
            return data
        try:
            data = self._transform.open(chunk_hash, stored)
        except Exception as e:  # an authenticating transform rejects tampering
            raise CorruptionError(path, None, f"stored chunk cannot be opened: {e}") from e
        if hashlib.sha256(data).hexdigest() != chunk_hash:
            raise CorruptionError(path, None, "SHA-256 of the stored chunk does not match its name")
        return data

    def stale_chunks(self) -> list[str]:
        """Hashes of the chunk files sealed with another key than the active one.

        Reads each file's 76-byte header, nothing more: the re-encryption
        pass uses it after its walk of the map, to catch copies the map does
        not count (an orphan, a copy repair moved away) or that were busy
        when it passed.  Files whose header does not open are left out.
        """
        ring = self.keyring
        if ring is None:
            return []
        stale = []
        for name in self._names():
            path = self.root / name[:2] / name
            try:
                with open(path, "rb") as f:
                    head = f.read(SEALED_HEADER_BYTES)
                if Keyring.key_id_of(head[len(SEALED_MAGIC):]) == ring.active:
                    continue
                digest, _ = open_sealed(ring, path, name, head)
            except (OSError, StorageError, struct.error):
                continue
            stale.append(digest)
        return stale

    def reseal(self, chunk_hash: str) -> bool:
        """Seal the chunk again under the active key if another sealed it; True if rewritten.

        The re-encryption pass after a rotation.  The file is replaced
        atomically (temporary file, fsync, rename), so a crash leaves the
        old copy or the new, both readable while the key file holds both
        keys.  A chunk that does not open is left alone: scrub repairs
        damage, and an unknown key is the operator's to fix.
        """
        if self.keyring is None:
            return False
        path = self.path(chunk_hash)
        with disk_errors(f"cannot read chunk {chunk_hash}"):
            try:
                with open(path, "rb") as f:
                    head = f.read(_SEALED_HEAD)
            except FileNotFoundError:
                return False
        if len(head) < _SEALED_HEAD or Keyring.key_id_of(head[len(SEALED_MAGIC):]) == self.keyring.active:
            return False
        data = self.get(chunk_hash)
        atomic_write(path, self._seal(chunk_hash, path.name, data), tmp_dir=self._tmp,
                     what=f"cannot reseal chunk {chunk_hash}")
        return True

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
        """Every stored chunk hash, lazily (the store may hold millions).

        Sealed stores read each file's 76-byte header once per process to
        learn the hash behind its keyed name (then remembered); a file whose
        header does not open is skipped, never deleted: it is left for the
        operator (an unknown key) or for scrub (damage), not taken for an
        orphan.
        """
        for name in self._names():
            if self.keyring is None:
                yield name
                continue
            known = self._hash_of.get(name)
            if known is None:
                known = self._read_hash(name)
            if known is not None:
                yield known

    def _names(self) -> Iterator[str]:
        with disk_errors(f"cannot list chunks in {self.root}"):
            for fan in sorted(os.listdir(self.root)):
                if not _FAN.match(fan):
                    continue
                for name in sorted(os.listdir(self.root / fan)):
                    if _HASH.match(name) and name.startswith(fan):
                        yield name

    def _read_hash(self, name: str) -> str | None:
        path = self.root / name[:2] / name
        try:
            with open(path, "rb") as f:
                head = f.read(SEALED_HEADER_BYTES)
            digest, _ = self._open_sealed(path, name, head, None)
        except (OSError, StorageError):
            return None
        self._hash_of[name] = digest
        return digest

    def total_size(self) -> int:
        """Bytes all chunks occupy on disk."""
        total = 0
        with disk_errors(f"cannot measure chunks in {self.root}"):
            for name in self._names():
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    total += (self.root / name[:2] / name).stat().st_size
        return total
