"""The file store's frames that only nodes send or apply: chunk transfer, commands, placement.

Kept apart from :mod:`storg.wire.files` (the frames a client speaks) so that
a short-lived client process never pays for building these classes
(:mod:`storg.wire.record`).  Their type bytes
decode in any process: the codec imports this module on demand
(``storg.wire.FRAME_MODULES``).
"""

from __future__ import annotations

from storg.wire.codec import CODEC
from storg.wire.files import ChunkRef
from storg.wire.record import record
from storg.wire.schema import BOOL, BYTES32, ID, SHA256, STR16, U64, ListOf, Nested, layout, register_struct

# --- chunk transfer between nodes -----------------------------------------------

@layout(U64, SHA256, BYTES32)
@record
class ChunkPut:
    """Store this chunk durably; answered with ChunkStored once fsynced."""

    request_id: int
    hash: str
    data: bytes


@layout(U64, SHA256)
@record
class ChunkStored:
    request_id: int
    hash: str


@layout(U64, SHA256)
@record
class ChunkGet:
    request_id: int
    hash: str


@layout(U64, SHA256, BYTES32)
@record
class ChunkData:
    request_id: int
    hash: str
    data: bytes


# --- state machine commands (log entry payloads) ----------------------------------

@layout(U64, U64, U64, STR16, U64, SHA256, ListOf(Nested(ChunkRef)))
@record
class PutFileCommand:
    client_id: int
    seq: int
    modified_ns: int
    path: str
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]


@layout(U64, U64, U64, STR16)
@record
class RemoveFileCommand:
    client_id: int
    seq: int
    modified_ns: int
    path: str


@layout(U64, U64, U64, STR16, BYTES32, ListOf(ID))
@record
class PutInlineCommand:
    """A small file whose bytes ride in the log entry itself.

    A put of a few KiB is dominated by fsyncs: storing its one chunk on
    every holder first would cost more than the Raft commit.  Instead the
    bytes are made durable by the commit (the entry is fsynced on a majority
    like any other), and each of ``holders`` writes them to its chunk store
    when it applies the entry; those files are fsynced in one batch before
    the log is compacted past the entry.  See ``INLINE_MAX`` in
    storg.server.files.service.
    """

    client_id: int
    seq: int
    modified_ns: int
    path: str
    data: bytes
    holders: tuple[str, ...]


@layout(ListOf(SHA256))
@record
class CollectChunksCommand:
    """Forget chunks no file refers to; every node then deletes its copies."""

    hashes: tuple[str, ...]


# --- placement, repair and scrub (issue 6) --------------------------------------------

@layout(SHA256, ListOf(ID), ListOf(ID))
@record
class ChunkHoldersCommand:
    """Replace a chunk's recorded holders: ``expected`` -> ``holders`` (repair, by the leader).

    Carries the holders the leader saw when it decided, so the change is
    refused (StaleChange) if the chunk map moved meanwhile: a put merged
    new holders, another repair ran, or the chunk was collected.
    """

    hash: str
    expected: tuple[str, ...]
    holders: tuple[str, ...]


@layout(U64, SHA256, U64, BYTES32)
@record
class ChunkPutAfter:
    """ChunkPut, stored only once the receiver has applied the log up to ``index``.

    A chunk collected by an entry at or below ``index`` is deleted on the
    receiver when it applies that entry: writing the new copy after it keeps
    that deletion from removing a copy the sender is about to record.
    """

    request_id: int
    hash: str
    index: int
    data: bytes


@layout(U64, SHA256, ID)
@record
class ChunkPlacedQuery:
    """Asked of the leader: did you place chunk ``hash`` on ``holder`` (an upload in flight)?

    A node that receives a ``ChunkPutAfter`` for a chunk its map does not know
    asks this over its own connection to the leader before writing a byte,
    so a stranger cannot make it store chunks nobody placed there.
    """

    request_id: int
    hash: str
    holder: str


@layout(U64, BOOL)
@record
class ChunkPlacedReply:
    request_id: int
    placed: bool


@layout(U64, ListOf(SHA256))
@record
class ChunkPinQuery:
    """A node's orphan sweep asks the leader: which of these chunks does a live upload or repair hold?

    The lease behind a chunk file the map does not name yet: it is kept for
    as long as the leader's upload (or repair) that wrote it lives, however
    long that takes and whatever the clocks do, instead of for a fixed age.
    """

    request_id: int
    hashes: tuple[str, ...]


@layout(U64, ListOf(SHA256))
@record
class ChunkPinReply:
    request_id: int
    pinned: tuple[str, ...]


_TYPE_BYTES: dict[int, type] = {
    56: ChunkPut, 57: ChunkStored, 58: ChunkGet, 59: ChunkData,
    65: PutFileCommand, 66: RemoveFileCommand, 67: CollectChunksCommand, 68: PutInlineCommand,
    69: ChunkHoldersCommand,
    122: ChunkPutAfter, 123: ChunkPlacedQuery, 124: ChunkPlacedReply,
    128: ChunkPinQuery, 129: ChunkPinReply,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
