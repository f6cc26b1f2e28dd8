"""Snapshot records of the file store state machine, one CODEC frame each.

A snapshot is a stream of small frames rather than one document, so a
namespace of a million files is written, sent and read back without ever
holding it as one bytes object.  The stream is: one :class:`SnapshotHeader`
(the format and how many records of each kind follow, which is how a
truncated stream is caught), then the members (the existing
:class:`~storg.wire.MemberAddress` frame), then one :class:`ChunkRecord`
per chunk, one :class:`FileRecord` per file and one session record per
client session.

Type bytes 80-95 are reserved for these records; 80-85 are taken here.
Hashes are SHA-256 in hex, as everywhere in Python code.
"""

from __future__ import annotations

from dataclasses import dataclass

from storg.wire.codec import CODEC
from storg.wire.files import FileInfo
from storg.wire.schema import (
    ID,
    SHA256,
    STR16,
    STR32,
    U16,
    U32,
    U64,
    ListOf,
    Nested,
    layout,
    register_struct,
)

SNAPSHOT_FORMAT = 1
"""Bumped whenever the meaning or order of the records changes."""


@layout(U16, U64, U64, U64, U64)
@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """First frame of a snapshot: its format and the number of records of each kind."""

    format: int
    members: int
    chunks: int
    files: int
    sessions: int


@layout(SHA256, U32, U64, ListOf(ID))
@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk map entry; ``refs`` is checked against the files on restore."""

    hash: str
    size: int
    refs: int
    holders: tuple[str, ...]


@layout(STR16, U64, SHA256, U64, U64, ListOf(SHA256))
@dataclass(frozen=True, slots=True)
class FileRecord:
    """One namespace entry; chunk sizes and holders come from the chunk records."""

    path: str
    size: int
    sha256: str
    modified_ns: int
    version: int
    chunks: tuple[str, ...]


@layout(U64, U64, U64, Nested(FileInfo))
@dataclass(frozen=True, slots=True)
class SessionPutRecord:
    """A client session whose last command was a put that succeeded with ``info``.

    ``index`` is the log index of that command: it orders sessions for eviction.
    """

    client_id: int
    seq: int
    index: int
    info: FileInfo


@layout(U64, U64, U64, U64)
@dataclass(frozen=True, slots=True)
class SessionIndexRecord:
    """A client session whose last command succeeded with an integer (an rm's version)."""

    client_id: int
    seq: int
    index: int
    value: int


@layout(U64, U64, U64, ID, STR32)
@dataclass(frozen=True, slots=True)
class SessionErrorRecord:
    """A client session whose last command was refused: the error's class name and message."""

    client_id: int
    seq: int
    index: int
    error: str
    message: str


SESSION_RECORDS = (SessionPutRecord, SessionIndexRecord, SessionErrorRecord)

_TYPE_BYTES: dict[int, type] = {
    80: SnapshotHeader, 81: ChunkRecord, 82: FileRecord,
    83: SessionPutRecord, 84: SessionIndexRecord, 85: SessionErrorRecord,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
