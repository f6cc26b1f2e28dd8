"""Frames of batched small files: many puts in one log entry, many gets in one request (``put -r``, ``get -r``).

Type bytes 74-78 (next to the tree operations' 70-73).

Why batches: a tree of ten thousand 4 KiB files sent as ten thousand
ordinary puts costs ten thousand Raft entries, each with its request,
proposal, replication message and apply, and three frames each way on
the client's connection; measured with benchmarks/tree_bench.py, the
leader's reactor spent about a millisecond per file on that alone.  A
:class:`PutBatchRequest` carries up to :data:`MAX_BATCH_FILES` small
files (each at most the inline size, so each rides in the entry as an
ordinary inline put does) and becomes one :class:`PutInlineBatchCommand`:
one entry, one session, applied whole or not at all.  A
:class:`GetBatchRequest` reads many small files at one read index and
answers in one frame.

Each file carries the SHA-256 its sender computed, so the receiver checks
the bytes end to end as a single put or get does.
"""

from __future__ import annotations

from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import BOOL, BYTES32, SHA256, STR16, U32, U64, ListOf, Nested, layout, register_struct

MAX_BATCH_FILES = 512
"""Files in one batch, either way: bounds the work of one request and one entry."""

MAX_BATCH_BYTES = 1 << 20
"""File bytes in one batch, either way (the frame and entry limits are several times this)."""


@layout(STR16, BYTES32, SHA256)
@record
class BatchFile:
    """One small file of a batch: its path, its bytes and their SHA-256 (hex)."""

    path: str
    data: bytes
    sha256: str


@layout(U64, U64, U64, ListOf(Nested(BatchFile)))
@record
class PutBatchRequest:
    """Store every file of ``files`` in one entry (a retry with the same session gets the first outcome)."""

    request_id: int
    client_id: int
    seq: int
    files: tuple[BatchFile, ...]


@layout(U64, U64, U32)
@record
class PutBatchDone:
    """A batch applied at log index ``index``: ``files`` files stored."""

    request_id: int
    index: int
    files: int


@layout(U64, U64, ListOf(BYTES32))
@record
class PutInlineBatchCommand:
    """The entry of a batch: encoded ``PutObjectCommand`` frames, each around an inline put.

    The batch's ``client_id`` and ``seq`` are the one session of all of
    them; each inner put has ``client_id`` 0 and no condition, and its
    wrapper carries the file's attributes (its ETag).
    """

    client_id: int
    seq: int
    commands: tuple[bytes, ...]


@layout(U64, ListOf(STR16), BOOL)
@record
class GetBatchRequest:
    """Read the files at ``paths`` (each read whole), at one read index."""

    request_id: int
    paths: tuple[str, ...]
    stale: bool = False


@layout(U64, U64, ListOf(Nested(BatchFile)), ListOf(STR16), ListOf(STR16))
@record
class GetBatchReply:
    """The files read at log index ``index``; ``missing`` do not exist; ``left`` were not read here.

    A file is left out (for the client to get on its own) when it is too
    large for a batch or one of its chunks could not be read at once: the
    ordinary get path then reports, or recovers from, what went wrong.
    """

    request_id: int
    index: int
    files: tuple[BatchFile, ...]
    missing: tuple[str, ...]
    left: tuple[str, ...]


_TYPE_BYTES: dict[int, type] = {
    74: PutBatchRequest, 75: PutBatchDone, 76: PutInlineBatchCommand, 77: GetBatchRequest, 78: GetBatchReply,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
