"""The local ends of a transfer: what a put reads, where a get writes, and :class:`AtomicFile`.

:class:`LocalSource` (a put's file or stdin), :class:`DownloadSink` (a
get's file or stdout, emptied for a retry when it can be) and
:class:`AtomicFile` (a get never leaves a partial local file).

On its own (no Twisted) so that both drivers of the client protocol, the
Twisted one and storgctl's blocking one, write their local files alike.
"""

from __future__ import annotations

import io
import os
import stat
from typing import Any, BinaryIO, Self, cast

from storg.client.errors import LocalError


class AtomicFile:
    """A file written under a temporary name in the target's folder, renamed at the end.

    Readers of ``target`` see the old file or the whole new one; a failed
    get leaves the old file untouched and no partial file behind.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        target = os.fspath(target)
        if os.path.isdir(target):
            raise LocalError(f"{target} is a directory")
        self.target = target
        folder = os.path.dirname(os.path.abspath(target))
        import tempfile  # here: only a get to a file needs it (a put or a status does not)

        try:
            fd, self.temp = tempfile.mkstemp(
                dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".storg-part")
        except OSError as exc:
            raise LocalError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        self.f: BinaryIO = os.fdopen(fd, "w+b")
        self.finished = False

    def commit(self) -> None:
        """Make the content durable, then give it the target's name (mode as a new file's)."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temp, 0o666 & ~umask)
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.discard()
            raise LocalError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        self.finished = True

    def discard(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass


class LocalSource:
    """A put's bytes: a local file (re-readable) or a binary stream such as stdin (read once).

    The reads themselves block: the Twisted driver runs them in a thread
    (:class:`storg.client.upload.UploadSource`), the blocking one in line.

    ``consumed`` turns true with the first byte read; a put may be retried
    from the start only while :meth:`can_restart` holds.
    """

    def __init__(self, fileobj: BinaryIO, *, owned: bool = False) -> None:
        self.f = fileobj
        self.owned = owned
        try:
            self.seekable = bool(fileobj.seekable())
            self.start = fileobj.tell() if self.seekable else 0
        except (OSError, ValueError, AttributeError):
            self.seekable = False
            self.start = 0
        self.in_memory = isinstance(fileobj, io.BytesIO)
        self.size = self._size()
        self.consumed = False

    @classmethod
    def open(cls, path: str | os.PathLike) -> Self:
        """Open a local file; an unreadable one is a LocalError (storgctl exit 2)."""
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise LocalError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
        return cls(f, owned=True)

    def _size(self) -> int | None:
        if self.in_memory:
            return max(len(cast(io.BytesIO, self.f).getbuffer()) - self.start, 0)
        try:
            st = os.fstat(self.f.fileno())
        except (OSError, ValueError, AttributeError):
            return None
        if stat.S_ISREG(st.st_mode):
            return max(st.st_size - self.start, 0)
        return None

    def can_restart(self) -> bool:
        return self.seekable or not self.consumed

    def rewind(self) -> None:
        if self.consumed and self.seekable:
            self.f.seek(self.start)

    def read_whole(self, limit: int) -> bytes | None:
        """The whole content if it is at most ``limit`` bytes; else None, rewound to the start."""
        self.consumed = True
        try:
            data = self.f.read(limit + 1)
            if data is None or len(data) > limit:
                self.f.seek(self.start)
                return None
        except (OSError, ValueError) as exc:
            raise LocalError(f"reading the source failed: {exc}") from None
        return bytes(data)

    def read_and_hash(self, size: int, hasher: Any) -> bytes:
        """Up to ``size`` bytes (fewer only at the end), hashed; the source counts as consumed."""
        self.consumed = True  # before the read: a retry must rewind even if this read fails
        try:
            data = self.f.read(size)
        except (OSError, ValueError) as exc:
            raise LocalError(f"reading the source failed: {exc}") from None
        if data is None:  # a non-blocking stream with nothing ready
            raise LocalError("the source is a non-blocking stream")
        hasher.update(data)
        return bytes(data)

    def close(self) -> None:
        if self.owned:
            self.f.close()


SYNC_EVERY = 64 * 1024 * 1024
"""Bytes written to a ``sync`` sink between two background fdatasyncs (both drivers' gets)."""


class DownloadSink:
    """Where a get's bytes go; a seekable sink can be emptied and refilled by a retry.

    ``sync=True``: the file will be fsynced once complete (AtomicFile), so
    flushing it to disk early, in the background, only moves that work.
    """

    def __init__(self, fileobj: BinaryIO, sync: bool = False) -> None:
        self.f = fileobj
        self.sync = sync
        try:
            self.seekable = bool(fileobj.seekable())
            self.start = fileobj.tell() if self.seekable else 0
        except (OSError, ValueError, AttributeError):
            self.seekable = False
            self.start = 0
        self.in_memory = isinstance(fileobj, io.BytesIO)
        self.dirty = False

    def can_restart(self) -> bool:
        return self.seekable or not self.dirty

    def restart(self) -> None:
        if self.dirty and self.seekable:
            self.f.seek(self.start)
            self.f.truncate()
            self.dirty = False

    def write_and_hash(self, data: bytes, hasher: Any) -> None:
        """Runs in the writer thread; never on the reactor."""
        try:
            self.f.write(data)
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None
        hasher.update(data)

    def write_many(self, pieces: list) -> None:
        """Runs in a thread: write each piece, in order (hashing runs beside it)."""
        try:
            for data in pieces:
                self.f.write(data)
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None

    def sync_now(self) -> None:
        """Runs in a thread beside the writer: push what the kernel holds to disk.

        Large writes bypass the file object's buffer, so the descriptor has
        them; whatever is still buffered is the final fsync's business.
        """
        try:
            os.fdatasync(self.f.fileno())
        except (OSError, ValueError):
            pass  # the final fsync reports real trouble

    def flush(self) -> None:
        try:
            self.f.flush()
        except (OSError, ValueError) as exc:
            raise LocalError(f"writing the output failed: {exc}") from None
