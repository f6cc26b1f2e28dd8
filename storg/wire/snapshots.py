"""Frames of InstallSnapshot streaming (type bytes 100-109), on the follower's client port.

The Raft core's SNAPSHOT message only describes a snapshot; the data (a
whole namespace, possibly gigabytes) is streamed beside it, leader to
follower, in bounded frames on the follower's client port, so it never
queues ahead of heartbeats on the peer connection.  One transfer is one
request id::

    leader   SnapshotBegin(meta, size, sha256)
    follower SnapshotOffset(offset)   bytes it already holds of this exact snapshot
    leader   SnapshotPart(offset, data) ...   no reply each; TCP flow control paces them
    leader   SnapshotEnd
    follower SnapshotStored(index, term)   verified and durable: send the SNAPSHOT message

A follower that already has everything up to the snapshot's index answers
SnapshotBegin with SnapshotStored at once.  Refusals are ErrorReply frames.
"""

from __future__ import annotations

from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import BYTES32, ID, SHA256, U64, ListOf, layout, register_struct


@layout(U64, ID, U64, U64, U64, ListOf(ID), ListOf(ID), U64, SHA256)
@record
class SnapshotBegin:
    """Start (or resume) sending the snapshot at (``index``, ``snap_term``).

    ``leader`` and ``term`` are the sender's: the follower accepts only the
    leader its core currently follows in that term.  ``voters`` and
    ``learners`` are the membership as of ``index``; ``size`` and
    ``sha256`` describe the data and identify the snapshot for resuming.
    """

    request_id: int
    leader: str
    term: int
    index: int
    snap_term: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    size: int
    sha256: str


@layout(U64, U64)
@record
class SnapshotOffset:
    """Send from ``offset``: the follower kept that much from an interrupted transfer."""

    request_id: int
    offset: int


@layout(U64, U64, BYTES32)
@record
class SnapshotPart:
    """``data`` at ``offset`` of the snapshot's data; parts must arrive in order, without gaps."""

    request_id: int
    offset: int
    data: bytes


@layout(U64)
@record
class SnapshotEnd:
    request_id: int


@layout(U64, U64, U64)
@record
class SnapshotStored:
    """The follower holds the snapshot (or everything it covers): the leader may send SNAPSHOT."""

    request_id: int
    index: int
    term: int


_TYPE_BYTES: dict[int, type] = {
    100: SnapshotBegin, 101: SnapshotOffset, 102: SnapshotPart, 103: SnapshotEnd,
    104: SnapshotStored,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)

__all__ = ["SnapshotBegin", "SnapshotEnd", "SnapshotOffset", "SnapshotPart", "SnapshotStored"]
