"""Frames of cluster administration (type bytes 110-119), on a node's client port.

``storgctl member list|add|remove`` and ``storgctl leader transfer`` talk to
the leader (any other node redirects with NOT_LEADER).  ``member add`` is a
stream: the leader answers with ``MemberAddProgress`` frames while the new
learner catches up, then one ``MemberChanged``.  The others are one request,
one reply.

``RemovedNotice`` goes the other way, leader to removed node: once a
removal has committed, the leader stops replicating to the removed node, so
that node would never learn that the entry removing it committed.  The
leader tells it, and it stops.
"""

from __future__ import annotations

from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import (
    BOOL,
    ID,
    STR16,
    U64,
    ListOf,
    Nested,
    layout,
    register_struct,
)

VOTER = "voter"
LEARNER = "learner"
REMOVED = "removed"


@layout(ID, ID, STR16, STR16)
@record
class MemberInfo:
    """One member as ``member list`` shows it; ``role`` is ``voter`` or ``learner``."""

    id: str
    role: str
    peer: str
    client: str


@layout(U64)
@record
class MemberListRequest:
    request_id: int


@layout(U64, ListOf(Nested(MemberInfo)))
@record
class MemberListReply:
    request_id: int
    members: tuple[MemberInfo, ...] = ()


@layout(U64, ID, STR16, STR16, BOOL)
@record
class MemberAddRequest:
    """Add ``node_id`` as a learner, wait until it caught up, then make it a voter.

    ``learner_only`` stops after the first step.  Sending it again for a
    member already added continues where the cluster is (idempotent).
    """

    request_id: int
    node_id: str
    peer: str
    client: str
    learner_only: bool = False


@layout(U64, ID, U64, U64, ID)
@record
class MemberAddProgress:
    """The learner holds the log up to ``match`` of the leader's ``last_index``."""

    request_id: int
    node_id: str
    match: int
    last_index: int
    state: str


@layout(U64, ID, ID, U64)
@record
class MemberChanged:
    """The change is committed: ``node_id`` is now ``role`` (voter, learner or removed).

    ``index`` is the log index of the last membership entry involved.
    """

    request_id: int
    node_id: str
    role: str
    index: int


@layout(U64, ID)
@record
class MemberRemoveRequest:
    request_id: int
    node_id: str


@layout(U64, ID)
@record
class LeaderTransferRequest:
    """Hand leadership to ``target``, or to the most up-to-date voter if empty."""

    request_id: int
    target: str


@layout(U64, ID, U64)
@record
class LeaderTransferDone:
    """``leader`` is in office in ``term``."""

    request_id: int
    leader: str
    term: int


@layout(U64, ID, ID, U64, U64)
@record
class RemovedNotice:
    """Leader ``by`` (in ``term``) committed the entry at ``index`` removing ``node_id``."""

    request_id: int
    node_id: str
    by: str
    term: int
    index: int


_TYPE_BYTES: dict[int, type] = {
    110: MemberListRequest, 111: MemberListReply, 112: MemberAddRequest,
    113: MemberAddProgress, 114: MemberChanged, 115: MemberRemoveRequest,
    116: LeaderTransferRequest, 117: LeaderTransferDone, 118: RemovedNotice,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)

__all__ = [
    "LEARNER", "REMOVED", "VOTER", "LeaderTransferDone", "LeaderTransferRequest",
    "MemberAddProgress", "MemberAddRequest", "MemberChanged", "MemberInfo",
    "MemberListReply", "MemberListRequest", "MemberRemoveRequest", "RemovedNotice",
]
