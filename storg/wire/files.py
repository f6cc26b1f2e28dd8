"""Frames of the file store: client requests and replies, chunk transfer, and commands.

Three families share the one codec (the frames of the last two, which only
nodes send or apply, live in :mod:`storg.wire.chunks`, so that a client
such as storgctl does not build their classes):

* client requests and replies (type bytes 41-59), on a node's client port;
  every one carries the ``request_id`` it answers, so requests pipeline;
* chunk transfer between nodes (``ChunkPut``/``ChunkGet``), also on the
  client port: bulk bytes never queue behind Raft heartbeats on the peer
  connections;
* state machine commands (type bytes 65 and up), the payloads of NORMAL log
  entries.

Puts stream: ``PutStart`` (the leader answers ``PutReady`` or redirects),
any number of ``PutData`` frames, then ``PutEnd`` with the size and SHA-256
the client computed; the reply ``PutDone`` comes once the metadata entry is
committed and applied.  Gets stream the other way: ``GetStart`` (the file's
metadata), ``GetData`` frames, ``GetEnd``.  ``client_id`` and ``seq`` make
a retried put or rm apply once (client sessions).
"""

from __future__ import annotations

from storg.wire.attrs import NO_ATTRS, ObjectAttrs
from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import BOOL, BYTES32, ID, SHA256, STR16, U32, U64, ListOf, Nested, layout, register_struct

WHOLE = (1 << 64) - 1
"""``GetRequest.length`` for "to the end of the file"."""


@layout(SHA256, U32, ListOf(ID))
@record
class ChunkRef:
    """One chunk of a file: its SHA-256 (hex), size and the nodes holding it."""

    hash: str
    size: int
    holders: tuple[str, ...] = ()


@layout(STR16, U64, SHA256, U64, U64, ListOf(Nested(ChunkRef)), Nested(ObjectAttrs))
@record
class FileInfo:
    """A file's metadata as the namespace holds it.

    ``modified_ns`` is the leader's clock when it proposed the put, carried
    in the entry so every node agrees; ``version`` is the log index of the
    put that wrote this content.  ``attrs``: ETag, content type, user
    metadata and the rest (storg.wire.attrs); all empty for a file
    stored before they existed.
    """

    path: str
    size: int
    sha256: str
    modified_ns: int
    version: int
    chunks: tuple[ChunkRef, ...] = ()
    attrs: ObjectAttrs = NO_ATTRS


# --- client requests and replies ---------------------------------------------

@layout(U64, STR16, U64, U64)
@record
class PutStart:
    request_id: int
    path: str
    client_id: int
    seq: int


@layout(U64, U32)
@record
class PutReady:
    """The leader accepts the upload; send PutData frames of at most ``max_frame`` bytes."""

    request_id: int
    max_frame: int


@layout(U64, BYTES32)
@record
class PutData:
    request_id: int
    data: bytes


@layout(U64, U64, SHA256)
@record
class PutEnd:
    request_id: int
    size: int
    sha256: str


@layout(U64, Nested(FileInfo))
@record
class PutDone:
    request_id: int
    info: FileInfo


@layout(U64, STR16, BOOL, U64, U64)
@record
class GetRequest:
    """Fetch ``length`` bytes (:data:`WHOLE`: to the end) of ``path`` from ``offset`` on.

    The node sends only the chunks that overlap the range, trimmed to it.
    """

    request_id: int
    path: str
    stale: bool = False
    offset: int = 0
    length: int = WHOLE


@layout(U64, Nested(FileInfo), U64)
@record
class GetStart:
    """The file's metadata (its chunk list whole, whatever the range) and the read index that served it."""

    request_id: int
    info: FileInfo
    index: int = 0


@layout(U64, BYTES32)
@record
class GetData:
    request_id: int
    data: bytes


@layout(U64)
@record
class GetEnd:
    request_id: int


@layout(U64, STR16, BOOL, STR16, U32)
@record
class LsRequest:
    """List the folder ``prefix`` (``limit`` 0: every file, in as many pages as it takes), or
    one page (``limit`` > 0): at most ``limit`` files whose path starts with the string
    ``prefix`` (not only a folder), in path order, after ``start_after``."""

    request_id: int
    prefix: str
    stale: bool = False
    start_after: str = ""
    limit: int = 0


@layout(U64, ListOf(Nested(FileInfo)), BOOL, U64)
@record
class LsReply:
    """One page of an ``ls``; ``more``: further LsReply frames follow for this request (a
    whole listing), or further files match after this page (a page request).
    ``index``: the read index the listing was taken at."""

    request_id: int
    files: tuple[FileInfo, ...]
    more: bool = False
    index: int = 0


@layout(U64, STR16, BOOL)
@record
class StatRequest:
    request_id: int
    path: str
    stale: bool = False


@layout(U64, Nested(FileInfo), U64)
@record
class StatReply:
    request_id: int
    info: FileInfo
    index: int = 0


@layout(U64, STR16, U64, U64)
@record
class RmRequest:
    request_id: int
    path: str
    client_id: int
    seq: int


@layout(U64, U64)
@record
class RmDone:
    request_id: int
    version: int


# --- scrub (issue 6): a client's question to each node --------------------------------

@layout(U64, BOOL)
@record
class ScrubStatusRequest:
    """Ask one node for its scrub and repair counters; ``start`` begins a scrub pass now."""

    request_id: int
    start: bool = False


@layout(U64, ID, BOOL, U64, U64, U64, U64, U64, U64, U64, U64, U64)
@record
class ScrubStatusReply:
    """One node's counters since it started (``under_replicated``: as of its last scan)."""

    request_id: int
    node_id: str
    scrubbing: bool
    passes: int
    chunks_checked: int
    bytes_checked: int
    bad_copies: int
    missing_copies: int
    repairs_done: int
    under_replicated: int
    chunks_collected: int
    orphans_removed: int


_TYPE_BYTES: dict[int, type] = {
    41: PutStart, 42: PutReady, 43: PutData, 44: PutEnd, 45: PutDone,
    46: GetRequest, 47: GetStart, 48: GetData, 49: GetEnd,
    50: LsRequest, 51: LsReply, 52: StatRequest, 53: StatReply,
    54: RmRequest, 55: RmDone,
    120: ScrubStatusRequest, 121: ScrubStatusReply,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
