"""Errors raised by the storage layer.

Every failure that touches the disk surfaces as a :class:`StorageError` (or a
subclass), so the node has one thing to catch and report; the underlying
``OSError`` is kept as ``__cause__`` for the logs.
"""

from __future__ import annotations

import os


class StorageError(Exception):
    """The disk refused an operation, or what it holds cannot be used."""


class DiskFullError(StorageError):
    """The file system is out of space (ENOSPC/EDQUOT).

    Kept apart because the node may answer "try later" rather than stop:
    nothing half-written is left behind to be mistaken for data.
    """


class CorruptionError(StorageError):
    """Bytes on disk fail their checksum or do not decode.

    Raised instead of serving them: the operator gets one line naming the
    file and the offset, and can restore that node from its peers.
    ``offset`` is None when the whole file is condemned (a chunk whose hash
    is wrong says nothing about where).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        where = self.path if offset is None else f"{self.path} at offset {offset}"
        super().__init__(f"corrupt data in {where}: {reason}")


class HashMismatchError(StorageError, ValueError):
    """Data handed to the chunk store does not hash to the name it was given."""


class ChunkNotFoundError(StorageError, KeyError):
    """No chunk with that hash is stored here."""

    def __str__(self) -> str:  # KeyError would print the repr of the hash
        return str(self.args[0]) if self.args else "chunk not found"


class IdentityMismatch(StorageError):
    """The data directory belongs to another node or cluster.

    Starting anyway would mix two nodes' logs, the one thing Raft cannot
    survive, so the node refuses with this one-line message.
    """
