"""Who may send what on the client port: each request's permission, each role's grants.

The model is etcd's client-cert-auth with roles, narrowed to what a file
store needs.  A connection's identity comes from its verified certificate
(:func:`storg.net.tls.peer_identity`), never from anything it sends, and
each request type needs one permission:

==============  =================================================================
``cluster``     status, member list, scrub counters: who is who, no file data
``read``        get (ranged too), ls (and its pages), stat, watch, ProbeRead, batched gets (get -r)
``write``       put (PutStart, PutStartIf, PutStartObject, PutData, PutEnd, PutEndObject, PutAbort, batched puts),
                rm, mv, cp (with attributes too), rm -r, compose, ProbeWrite
``admin``       member add and remove, leader transfer, starting a scrub pass, S3 access
                keys (create, list, revoke: a key is a credential, like a certificate)
``node``        what only another node of this cluster sends: chunk reads and
                copies between nodes (and whether the leader placed a chunk),
                snapshot transfer, removal notices
==============  =================================================================

Roles grant permissions: ``readonly`` has ``cluster`` and ``read``,
``readwrite`` also writes, ``admin`` also administers.  A node certificate
of a *current member* has ``cluster``, ``read``, ``write`` and ``node``,
but never ``admin``: a node does not change membership or keys through
another node's client port.  It may write files because the S3 gateway
inside each node acts through the client library with the node's own
certificate (issue 18): the gateway has already checked the S3 request's
signature and its key's role, so the node is the client of record, as a
storgctl user would be; a member could write chunks and entries anyway,
so this grants it no power it did not have.  A node certificate of a non-member (a removed node, a
node waiting to join) has only ``cluster``: that is how a removed node
asks the leader whether its removal is real (``admin.removed_notice``),
and all it may learn.

The table fails closed: a request type it does not list needs a permission
no role has, so a new message cannot be served to everyone by forgetting it
here (``tests/server/test_permissions.py`` checks that every handler is listed).
Without TLS (loopback only, or ``tls: off``) there is no identity and every
request is allowed, as before; the node logs a warning at start saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storg.net.tls import Identity
from storg.wire import ProbeRead, ProbeWrite, StatusRequest
from storg.wire.admin import (
    LeaderTransferRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberRemoveRequest,
    RemovedNotice,
)
from storg.wire.batch import GetBatchRequest, PutBatchRequest
from storg.wire.chunks import ChunkGet, ChunkPinQuery, ChunkPlacedQuery, ChunkPutAfter
from storg.wire.files import (
    GetRequest,
    LsRequest,
    PutData,
    PutEnd,
    PutStart,
    RmRequest,
    ScrubStatusRequest,
    StatRequest,
)
from storg.wire.objects import (
    ComposeRequest,
    CopyAttrsRequest,
    PutAbort,
    PutEndObject,
    PutStartObject,
    S3KeyCreateRequest,
    S3KeyListRequest,
    S3KeyRevokeRequest,
)
from storg.wire.snapshots import SnapshotBegin, SnapshotEnd, SnapshotPart
from storg.wire.tree import CopyRequest, MoveRequest, PutStartIf, RemoveTreeRequest, WatchRequest

CLUSTER = "cluster"
READ = "read"
WRITE = "write"
ADMIN = "admin"
NODE = "node"
UNLISTED = "unlisted"
"""What a request type missing from the table needs: no role has it."""

GRANTS: dict[str, frozenset[str]] = {
    "readonly": frozenset({CLUSTER, READ}),
    "readwrite": frozenset({CLUSTER, READ, WRITE}),
    "admin": frozenset({CLUSTER, READ, WRITE, ADMIN}),
    "node": frozenset({CLUSTER, READ, WRITE, NODE}),
}
NON_MEMBER_NODE = frozenset({CLUSTER})
"""What a node certificate of a node that is not (or no longer) a member may do."""


def _scrub(request: ScrubStatusRequest) -> str:
    return ADMIN if request.start else CLUSTER


REQUIRED: dict[type, str | Callable[[Any], str]] = {
    StatusRequest: CLUSTER,
    ProbeRead: READ,
    GetRequest: READ,
    LsRequest: READ,
    StatRequest: READ,
    WatchRequest: READ,
    GetBatchRequest: READ,
    MemberListRequest: CLUSTER,
    ScrubStatusRequest: _scrub,
    PutStart: WRITE,
    PutStartIf: WRITE,
    PutBatchRequest: WRITE,
    PutStartObject: WRITE,
    PutAbort: WRITE,
    CopyAttrsRequest: WRITE,
    ComposeRequest: WRITE,
    S3KeyCreateRequest: ADMIN,
    S3KeyListRequest: ADMIN,
    S3KeyRevokeRequest: ADMIN,
    MoveRequest: WRITE,
    CopyRequest: WRITE,
    RemoveTreeRequest: WRITE,
    PutData: WRITE,
    PutEnd: WRITE,
    PutEndObject: WRITE,
    RmRequest: WRITE,
    ProbeWrite: WRITE,
    MemberAddRequest: ADMIN,
    MemberRemoveRequest: ADMIN,
    LeaderTransferRequest: ADMIN,
    ChunkGet: NODE,
    ChunkPutAfter: NODE,
    ChunkPlacedQuery: NODE,
    ChunkPinQuery: NODE,
    SnapshotBegin: NODE,
    SnapshotPart: NODE,
    SnapshotEnd: NODE,
    RemovedNotice: NODE,
}


def required(request: object) -> str:
    """The permission ``request`` needs (:data:`UNLISTED` for a type the table does not know)."""
    need = REQUIRED.get(type(request), UNLISTED)
    return need if isinstance(need, str) else need(request)


def refusal(identity: Identity | None, request: object, is_member: Callable[[str], bool]) -> str | None:
    """Why ``identity`` may not send ``request``, in one line for the client; None if it may.

    ``identity`` None means a connection without TLS: allowed (see the module
    docstring).  ``is_member(node_id)`` tells a current member's node
    certificate from a removed node's.
    """
    if identity is None:
        return None
    need = required(request)
    grants = GRANTS.get(identity.role, frozenset())
    if identity.is_node and not is_member(identity.name):
        grants = NON_MEMBER_NODE
        if need not in grants:
            return f"{identity} is not a member of this cluster"
    if need in grants:
        return None
    what = type(request).__name__
    if need == NODE:
        return f"{what} is sent only by the cluster's nodes, not by {identity}"
    return f"{what} needs the {need} permission, which {identity} does not have"
