"""Snapshots on disk, written and read as streams.

A snapshot of a namespace with a million files is large, so it is never one
bytes object: :class:`SnapshotWriter` takes any number of ``write`` calls and
:class:`SnapshotReader` hands it back in chunks.

File layout (big-endian), one file per snapshot named
``snapshot-<index>-<term>.snap``, index and term in 20 decimal digits (any
u64 fits; snapshots written by older versions have 16 digits and are still
read, since both widths sort by their integer value)::

    magic b"SGSN" | version u8 | len(meta) u32 | encode_snapshot_meta(meta)
    | data length u64 | SHA-256 of data (32 bytes) | CRC-32 of all the above u32
    | data

The header has a fixed size once the meta is known, so the writer reserves
it, streams the data after it, and fills it in at :meth:`SnapshotWriter.commit`.

Sealed snapshots (version 2, written when the store has a
:class:`~storg.storage.keys.Keyring`).  The header's tail also holds the
plaintext length (``data length u64 | SHA-256 | plain length u64``), and
the data is a run of frames, each ``length u32 | key id | salt | tag |
AES-GCM(up to 1 MiB of the snapshot)``, authenticated with the magic, the
version, the meta, the frame's number and a last-frame flag: frames cannot
be altered, reordered, dropped or cut off at a frame boundary without the
key.  The length and SHA-256 in the header are those of the stored bytes,
so a damaged file is still found without the key.  The reader decrypts
as it goes and hands back plaintext, so a snapshot sent to a follower is
plaintext on the (TLS) wire and sealed again by the follower's writer.
Only the meta (index, term, membership: no file names) is plaintext.
Version 1 files are still read.

A snapshot received from the leader is *staged* first
(:meth:`SnapshotWriter.stage`): written, fsynced and renamed to
``snapshot-<index>-<term>.staged``, a name :meth:`SnapshotStore.latest`
never reads.  It becomes the current snapshot only when promoted
(:meth:`SnapshotStore.promote`), which the log store does when the core
adopts that very snapshot; staged files are deleted when the store is
opened, so data that the core never adopted is never taken as the truth.

Durability: the file is written under a temporary name, fsynced, renamed,
and the directory fsynced; only then is the previous snapshot deleted, so a
crash at any point leaves at least one complete snapshot.  Temporary files
from a crash are removed when the store is opened.  Snapshots are expected
to have increasing indexes (Raft never installs an older one), which is how
:meth:`SnapshotStore.latest` chooses when a crash left two.

Threads: blocking I/O, safe from a thread pool; the caller serializes calls
on one store, writer or reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Self

from storg.raft.types import SnapshotMeta
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.fsutil import (
    disk_errors,
    ensure_dir,
    fsync_dir,
    remove_temp_files,
    temp_path,
    write_all,
)
from storg.storage.keys import Keyring
from storg.wire.records import CodecError, decode_snapshot_meta, encode_snapshot_meta

MAGIC = b"SGSN"
VERSION = 1
SEALED_VERSION = 2
READ_CHUNK = 1 << 20
FRAME_BYTES = 1 << 20
"""Plaintext bytes per sealed frame."""

_START = struct.Struct(">4sBI")  # magic, version, len(meta)
_TAIL = struct.Struct(">Q32s")  # data length, sha256
_SEALED_TAIL = struct.Struct(">Q32sQ")  # stored data length, sha256 of it, plaintext length
_FRAME_LEN = struct.Struct(">I")
_FRAME_AAD = struct.Struct(">QB")  # frame number, last
_CRC = struct.Struct(">I")
_NAME = re.compile(r"^snapshot-(\d{16}|\d{20})-(\d{16}|\d{20})\.snap$")
"""20 digits (a u64 has at most 20); the 16 of older snapshots are still read."""

U64_MAX = (1 << 64) - 1


def snapshot_name(meta: SnapshotMeta) -> str:
    """The file name of ``meta``'s snapshot; raises StorageError for an index or term that is no u64."""
    for what, value in (("index", meta.index), ("term", meta.term)):
        if not 0 <= value <= U64_MAX:
            raise StorageError(f"snapshot {what} {value} is not a u64: refusing to write it")
    name = f"snapshot-{meta.index:020d}-{meta.term:020d}.snap"
    assert _NAME.match(name), name  # a name _finals() does not see would be deleted at commit
    return name


_STAGED_SUFFIX = ".staged"


def _staged_path(directory: Path, meta: SnapshotMeta) -> Path:
    return directory / (snapshot_name(meta)[:-len(".snap")] + _STAGED_SUFFIX)


def _header(meta_bytes: bytes, length: int, digest: bytes, plain: int | None = None) -> bytes:
    """The header; ``plain`` (the plaintext length) only for a sealed snapshot."""
    if plain is None:
        tail = _TAIL.pack(length, digest)
        version = VERSION
    else:
        tail = _SEALED_TAIL.pack(length, digest, plain)
        version = SEALED_VERSION
    head = _START.pack(MAGIC, version, len(meta_bytes)) + meta_bytes + tail
    return head + _CRC.pack(zlib.crc32(head))


def _frame_aad(meta_bytes: bytes, number: int, last: bool) -> bytes:
    return _START.pack(MAGIC, SEALED_VERSION, len(meta_bytes)) + meta_bytes + _FRAME_AAD.pack(number, last)


class SnapshotWriter:
    """Streams one snapshot to a temporary file; nothing is visible until commit."""

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        self.meta = meta
        self._store = store
        self._final = store.directory / snapshot_name(meta)  # first: refuses an index that is no u64
        self._meta_bytes = encode_snapshot_meta(meta)
        self._tmp = temp_path(self._final)
        self._sha = hashlib.sha256()
        self._length = 0
        self._keyring = store.keyring
        self._plain = 0
        self._pending = bytearray()
        self._frames = 0
        self._done = False
        with disk_errors(f"cannot create {self._tmp}"):
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the header; commit fills in the length and digest.
            plain = None if self._keyring is None else 0
            self._write(bytes(len(_header(self._meta_bytes, 0, bytes(32), plain))))
        except BaseException:
            self.abort()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        try:
            with disk_errors(f"cannot write {self._tmp}"):
                write_all(self._fd, data)
        except StorageError:
            self.abort()
            raise

    def write(self, data: bytes | memoryview) -> None:
        """Append the next piece of the snapshot's data."""
        if self._done:
            raise StorageError(f"snapshot writer for {self._final.name} is finished")
        if self._keyring is None:
            self._stored(data)
            return
        self._plain += len(data)
        self._pending += data
        while len(self._pending) >= FRAME_BYTES:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            self._seal_frame(frame, last=False)

    def _stored(self, data: bytes | memoryview) -> None:
        self._write(data)
        self._sha.update(data)
        self._length += len(data)

    def _seal_frame(self, frame: bytes, last: bool) -> None:
        assert self._keyring is not None
        blob = self._keyring.seal(frame, _frame_aad(self._meta_bytes, self._frames, last))
        self._frames += 1
        self._stored(_FRAME_LEN.pack(len(blob)) + blob)

    def commit(self) -> SnapshotMeta:
        """Make the snapshot durable and current, then delete the previous one."""
        self._finish(self._final)
        self._store._remove_all_but(self._final)
        return self.meta

    def stage(self) -> Path:
        """Make the snapshot durable under its staged name, not current; returns that path.

        Other staged snapshots are deleted: at most one waits for the core.
        """
        staged = _staged_path(self._store.directory, self.meta)
        self._finish(staged)
        self._store._remove_staged_but(staged)
        return staged

    def _finish(self, target: Path) -> None:
        if self._done:
            raise StorageError(f"snapshot writer for {self._final.name} is finished")
        plain = None
        if self._keyring is not None:
            self._seal_frame(bytes(self._pending), last=True)
            self._pending = bytearray()
            plain = self._plain
        try:
            with disk_errors(f"cannot commit {target}"):
                os.pwrite(self._fd, _header(self._meta_bytes, self._length, self._sha.digest(), plain), 0)
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
                os.replace(self._tmp, target)
                fsync_dir(self._store.directory)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Discard the temporary file; the previous snapshot stays current."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            if self._fd >= 0:
                os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # Leaving the block without commit() (or with an error) discards it.
        self.abort()


class SnapshotReader:
    """Reads one snapshot's data in chunks, checking its SHA-256 at the end.

    ``read`` raises :class:`CorruptionError` on the call that reaches the
    end if the digest is wrong, so a consumer must treat everything it got
    as provisional until it has read to the end.  ``verify`` checks the
    whole file up front without holding it in memory.
    """

    def __init__(self, path: Path, keyring: Keyring | None = None) -> None:
        self.path = path
        self.keyring = keyring
        self._plain: int | None = None
        with disk_errors(f"cannot open {path}"):
            self._fd = os.open(path, os.O_RDONLY)
        try:
            self.meta, self._stored_size, self._digest, self._start = self._read_header()
            with disk_errors(f"cannot stat {path}"):
                actual = os.fstat(self._fd).st_size
            if actual != self._start + self._stored_size:
                raise CorruptionError(path, actual, f"file is {actual} bytes, header says "
                                      f"{self._start + self._stored_size}")
            if self._plain is not None and keyring is None:
                raise StorageError(f"snapshot {path} is sealed and no encryption key is configured")
        except BaseException:
            self.close()
            raise
        self.size = self._stored_size if self._plain is None else self._plain
        """Bytes of (plaintext) data ``read`` hands back in all."""
        self._pos = 0
        self._stored_pos = 0
        self._buffer = b""
        self._frames = 0
        self._last_seen = False
        self._sha = hashlib.sha256()

    def _pread(self, n: int, offset: int) -> bytes:
        with disk_errors(f"cannot read {self.path}"):
            return os.pread(self._fd, n, offset)

    def _read_header(self) -> tuple[SnapshotMeta, int, bytes, int]:
        start = self._pread(_START.size, 0)
        if len(start) < _START.size:
            raise CorruptionError(self.path, 0, "file is shorter than its header")
        magic, version, meta_len = _START.unpack(start)
        if magic != MAGIC:
            raise CorruptionError(self.path, 0, f"bad magic {magic!r}")
        if version not in (VERSION, SEALED_VERSION):
            raise CorruptionError(self.path, 4, f"unsupported version {version}")
        tail = _TAIL if version == VERSION else _SEALED_TAIL
        rest_len = meta_len + tail.size + _CRC.size
        rest = self._pread(rest_len, _START.size)
        if len(rest) < rest_len:
            raise CorruptionError(self.path, _START.size, "file is shorter than its header")
        head = start + rest[:-_CRC.size]
        if zlib.crc32(head) != _CRC.unpack(rest[-_CRC.size:])[0]:
            raise CorruptionError(self.path, 0, "header checksum mismatch")
        try:
            meta = decode_snapshot_meta(rest[:meta_len])
        except CodecError as e:
            raise CorruptionError(self.path, _START.size, f"undecodable snapshot meta: {e}") from None
        if version == VERSION:
            length, digest = _TAIL.unpack_from(rest, meta_len)
        else:
            length, digest, self._plain = _SEALED_TAIL.unpack_from(rest, meta_len)
            self._meta_bytes = rest[:meta_len]
        return meta, length, digest, _START.size + rest_len

    def read(self, n: int = READ_CHUNK) -> bytes:
        """The next at most ``n`` bytes of data; ``b""`` at the end."""
        if self._plain is not None:
            return self._read_sealed(n)
        if self._pos >= self.size:
            return b""
        data = self._pread(min(n, self.size - self._pos), self._start + self._pos)
        if not data:
            raise CorruptionError(self.path, self._start + self._pos, "file ended early")
        self._pos += len(data)
        self._sha.update(data)
        if self._pos >= self.size and self._sha.digest() != self._digest:
            raise CorruptionError(self.path, self._start, "SHA-256 of the data does not match the header")
        return data

    def _stored_read(self, n: int) -> bytes:
        offset = self._start + self._stored_pos
        if self._stored_pos + n > self._stored_size:
            raise CorruptionError(self.path, offset, "sealed frame runs past the end of the data")
        data = self._pread(n, offset)
        if len(data) != n:
            raise CorruptionError(self.path, offset, "file ended early")
        self._stored_pos += n
        self._sha.update(data)
        return data

    def _next_frame(self) -> bytes:
        """Decrypt the next sealed frame; at the end of the file, check the digest and the last flag."""
        assert self.keyring is not None
        if self._last_seen:
            raise CorruptionError(self.path, self._start + self._stored_pos, "data after the last frame")
        (length,) = _FRAME_LEN.unpack(self._stored_read(_FRAME_LEN.size))
        blob = self._stored_read(length)
        last = self._stored_pos >= self._stored_size
        if last and self._sha.digest() != self._digest:
            raise CorruptionError(self.path, self._start, "SHA-256 of the data does not match the header")
        plain = self.keyring.open(blob, _frame_aad(self._meta_bytes, self._frames, last), self.path)
        self._frames += 1
        self._last_seen = last
        return plain

    def _read_sealed(self, n: int) -> bytes:
        """Plaintext from the frames; the call that reaches the end has checked the last frame."""
        while not self._buffer and not self._last_seen:
            self._buffer = self._next_frame()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self._pos += len(data)
        if self._pos == self.size and not self._buffer and not self._last_seen:
            self._buffer = self._next_frame()  # the last frame follows, empty: check it now
        if self._pos > self.size or (self._pos == self.size and self._buffer):
            raise CorruptionError(self.path, None, "sealed frames hold more than the header says")
        if not data and self._pos != self.size:
            raise CorruptionError(self.path, None, "sealed frames hold less than the header says")
        return data

    def first_key_id(self) -> int | None:
        """The key id the first sealed frame names (None for a plaintext snapshot)."""
        if self._plain is None:
            return None
        head = self._pread(_FRAME_LEN.size + 4, self._start)
        if len(head) < _FRAME_LEN.size + 4:
            raise CorruptionError(self.path, self._start, "file ended early")
        return int.from_bytes(head[_FRAME_LEN.size:], "big")

    def verify(self) -> None:
        """Check the whole data against its digest, one chunk at a time."""
        sha = hashlib.sha256()
        pos = 0
        while pos < self._stored_size:
            data = self._pread(min(READ_CHUNK, self._stored_size - pos), self._start + pos)
            if not data:
                raise CorruptionError(self.path, self._start + pos, "file ended early")
            sha.update(data)
            pos += len(data)
        if sha.digest() != self._digest:
            raise CorruptionError(self.path, self._start, "SHA-256 of the data does not match the header")

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotStore:
    """The snapshots kept in one directory: normally exactly one."""

    def __init__(self, directory: str | os.PathLike[str], keyring: Keyring | None = None) -> None:
        self.directory = ensure_dir(directory)
        self.keyring = keyring
        remove_temp_files(self.directory)
        # A staged snapshot the core had not adopted before the stop: never the truth.
        self._remove_staged_but(None)

    def staged(self, meta: SnapshotMeta) -> bool:
        """Whether ``meta``'s snapshot is staged (received, not yet adopted)."""
        return _staged_path(self.directory, meta).is_file()

    def promote(self, meta: SnapshotMeta) -> None:
        """Make the staged snapshot of ``meta`` the current one, then delete the others."""
        staged = _staged_path(self.directory, meta)
        with SnapshotReader(staged, self.keyring) as reader:  # the header is checked, the meta must be this one
            if reader.meta != meta:
                raise StorageError(f"{staged.name} holds {reader.meta}, not {meta}")
        final = self.directory / snapshot_name(meta)
        with disk_errors(f"cannot promote {staged}"):
            os.replace(staged, final)
            fsync_dir(self.directory)
        self._remove_all_but(final)

    def _remove_staged_but(self, keep: Path | None) -> None:
        removed = False
        with disk_errors(f"cannot remove staged snapshots in {self.directory}"):
            for path in self.directory.iterdir():
                if path.name.endswith(_STAGED_SUFFIX) and path != keep:
                    path.unlink()
                    removed = True
            if removed:
                fsync_dir(self.directory)

    def begin(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Start writing a snapshot described by ``meta``."""
        return SnapshotWriter(self, meta)

    def _finals(self) -> list[tuple[int, int, Path]]:
        with disk_errors(f"cannot list {self.directory}"):
            names = os.listdir(self.directory)
        return sorted(
            (int(m.group(1)), int(m.group(2)), self.directory / n)
            for n in names if (m := _NAME.match(n))
        )

    def _latest_path(self) -> Path | None:
        finals = self._finals()
        return finals[-1][2] if finals else None

    def latest(self) -> SnapshotMeta | None:
        """Meta of the current snapshot (header checked), or None if there is none."""
        path = self._latest_path()
        if path is None:
            return None
        with SnapshotReader(path, self.keyring) as r:
            return r.meta

    def open_latest(self) -> SnapshotReader | None:
        """A reader over the current snapshot, or None; the caller closes it."""
        path = self._latest_path()
        return None if path is None else SnapshotReader(path, self.keyring)

    def reseal_latest(self) -> bool:
        """Rewrite the current snapshot under the active key if it is sealed with another.

        Part of the re-encryption pass: the same meta and data, written and
        committed like any snapshot (a crash leaves the old file or the new).
        The caller serializes it with other commits.
        """
        ring = self.keyring
        path = self._latest_path()
        if ring is None or path is None:
            return False
        with SnapshotReader(path, ring) as reader:
            if reader.first_key_id() in (None, ring.active):
                return False
            writer = self.begin(reader.meta)
            try:
                while data := reader.read(READ_CHUNK):
                    writer.write(data)
            except BaseException:
                writer.abort()
                raise
        writer.commit()
        return True

    def _remove_all_but(self, keep: Path) -> None:
        removed = False
        finals = self._finals()
        if keep not in [path for _, _, path in finals]:
            # Never delete the snapshots we have for one that could not be read back.
            raise StorageError(f"{keep.name} is not a snapshot name this store reads")
        with disk_errors(f"cannot remove old snapshots in {self.directory}"):
            for _, _, path in finals:
                if path != keep:
                    path.unlink()
                    removed = True
            if removed:
                fsync_dir(self.directory)
