"""The values of the replicated state: chunk map entries, packed file records, client sessions.

All immutable, so a shallow copy of their containers is a consistent image
(:mod:`storg.fsm.snapshot` relies on it).  Memory is the constraint that
shapes them: a file is one small packed record, holders live in the chunk
map only, and identical holder sets are shared.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from storg.fsm.errors import (
    ERRORS,
)
from storg.fsm.records import (
    DIGEST_BYTES,
    file_attrs,
    file_head,
)
from storg.wire.files import (
    ChunkRef,
    FileInfo,
)


class ChunkState(NamedTuple):
    """One chunk map entry: its size, the nodes holding it, how many file references it has.

    A named tuple rather than a frozen dataclass: restoring a snapshot
    builds one per chunk, and a tuple is built about three times faster.
    """

    size: int
    holders: frozenset[str]
    refs: int


new_chunk_state = functools.partial(tuple.__new__, ChunkState)
"""ChunkState from a (size, holders, refs) tuple without the keyword-handling constructor."""

PackedFile = bytes
"""A namespace entry, as :func:`~storg.fsm.records.pack_file` lays it out; snapshots carry the same bytes."""


@dataclass(frozen=True, slots=True)
class Session:
    """A client's last applied command: its seq, log index and outcome (a result or an error)."""

    seq: int
    index: int
    result: Any = None
    error: tuple[str, str] | None = None

    def replay(self) -> Any:
        if self.error is not None:
            name, message = self.error
            raise ERRORS[name](message)
        return self.result


def chunk_digests_of(chunks: bytes) -> Iterator[bytes]:
    for pos in range(0, len(chunks), DIGEST_BYTES):
        yield chunks[pos:pos + DIGEST_BYTES]




class Change(NamedTuple):
    """One namespace change an entry made, for watchers (see :attr:`FileStoreStateMachine.on_entry`).

    ``kind`` is one of storg.wire.tree's WATCH_* constants; ``path`` the
    file after the change (the deleted file, for a delete); ``src`` where a
    moved file came from; ``size`` and ``sha256`` (raw) its content after
    the change (zero and empty for a delete).
    """

    kind: int
    path: str
    src: str = ""
    size: int = 0
    sha256: bytes = b""


class Listing:
    """A frozen listing of files (see :meth:`FileStoreStateMachine.listing`)."""

    __slots__ = ("paths", "_records")

    def __init__(self, paths: list[str], records: Mapping[str, PackedFile]) -> None:
        self.paths = paths
        self._records = records

    def __len__(self) -> int:
        return len(self.paths)

    def page(self, start: int, stop: int) -> list[FileInfo]:
        """FileInfos, without chunks, of the files ``start`` to ``stop - 1`` in path order."""
        records = self._records
        return [bare_info(path, records[path]) for path in self.paths[start:stop]]


def bare_info(path: str, rec: PackedFile, chunks: tuple[ChunkRef, ...] = ()) -> FileInfo:
    size, modified_ns, version, sha = file_head(rec)
    return FileInfo(path, size, sha.hex(), modified_ns, version, chunks, file_attrs(rec))
