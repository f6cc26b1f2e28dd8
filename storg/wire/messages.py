"""Non-Raft frames exchanged between nodes and with storgctl.

Raft's own messages are :class:`storg.raft.types.Message`; these classes
cover what surrounds them: the peer handshake, and the first client
command (``status``) with its generic error answer.  They are plain frozen
values; their byte layouts live in :mod:`storg.wire.codec`.

Node ids are at most 255 bytes on the wire (the config allows 64
characters); addresses, cluster and instance ids up to 65,535 bytes; free
text (refusal reasons, error messages) up to the frame size.
"""

from __future__ import annotations

from enum import IntEnum

from storg.wire.record import record


class ErrorCode(IntEnum):
    """Why a request failed; the client maps these to storgctl exit codes."""

    NOT_LEADER = 1  # retry at ``ErrorReply.leader`` (empty if unknown)
    UNAVAILABLE = 2  # no leader or no quorum right now
    NOT_FOUND = 3
    BAD_REQUEST = 4
    INTEGRITY = 5  # checksum mismatch
    INTERNAL = 6
    PERMISSION_DENIED = 7  # the connection's certificate does not allow this request
    DISK_FULL = 8  # free space is below the node's disk reserve: writes refused, reads served
    LIMIT_EXCEEDED = 9  # a per-connection or per-request limit (too many in flight, too big)
    CONFLICT = 10  # the namespace is not as the request requires: a destination exists, a put's condition failed
    COMPACTED = 11  # a watch asked for entries the log no longer holds: start again from a listing


NOT_LEADER = ErrorCode.NOT_LEADER
UNAVAILABLE = ErrorCode.UNAVAILABLE
NOT_FOUND = ErrorCode.NOT_FOUND
BAD_REQUEST = ErrorCode.BAD_REQUEST
INTEGRITY = ErrorCode.INTEGRITY
INTERNAL = ErrorCode.INTERNAL
PERMISSION_DENIED = ErrorCode.PERMISSION_DENIED
DISK_FULL = ErrorCode.DISK_FULL
LIMIT_EXCEEDED = ErrorCode.LIMIT_EXCEEDED
CONFLICT = ErrorCode.CONFLICT
COMPACTED = ErrorCode.COMPACTED


@record
class Hello:
    """Peer handshake, sent first in both directions.

    The receiver checks ``version`` and ``cluster_id`` before trusting any
    Raft message, and uses ``instance_id`` to notice a peer that came back
    with an empty data_dir (a forgotten vote).  ``version`` is a u16.
    """

    version: int
    cluster_id: str
    node_id: str
    instance_id: str


@record
class HelloRefused:
    """Sent just before closing a refused peer, so its log says why."""

    reason: str


@record
class StatusRequest:
    """``storgctl status`` asks one node for its row and its member list."""

    request_id: int


@record
class MemberRow:
    """One row of ``storgctl status``, as the node itself sees it.

    Not a frame on its own: it is nested inside :class:`StatusReply`.
    """

    id: str
    role: str
    term: int
    leader: str
    commit_index: int
    applied_index: int
    last_index: int


@record
class MemberAddress:
    """Where a member listens.

    Nested inside :class:`StatusReply`, and also a frame of its own: the
    ``context`` of a membership change carries one.
    """

    id: str
    peer: str
    client: str


@record
class StatusReply:
    """A node's own row plus the members it knows, so the client can ask each."""

    request_id: int
    row: MemberRow
    members: tuple[MemberAddress, ...] = ()


@record
class ErrorReply:
    """A request failed; ``code`` is an :class:`ErrorCode` (u16 on the wire).

    ``leader`` is the leader hint for NOT_LEADER (the server puts the
    leader's client address there when it knows it), else empty; it is
    encoded with a u16 length so either an id or an address fits.
    """

    request_id: int
    code: int
    message: str
    leader: str = ""


@record
class ProbeWrite:
    """Commit a write that changes nothing: a health check of the whole write path.

    The payload goes through consensus like any command (persisted on a
    majority, committed, applied) and is then dropped.  Operators use it to
    check that a cluster can commit; the commit benchmark uses it to measure
    consensus alone, without file bytes.
    """

    request_id: int
    payload: bytes = b""


@record
class ProbeRead:
    """Confirm a linearizable read point (ReadIndex) on the node asked."""

    request_id: int


@record
class ProbeReply:
    """Answer to ProbeWrite (the entry's index) and ProbeRead (the safe read index)."""

    request_id: int
    index: int


@record
class ProbeCommand:
    """The log entry a ProbeWrite commits; applying it changes no state."""

    payload: bytes = b""
