"""Object attributes (what S3 keeps beside an object's bytes) and the frames of the S3 gateway's needs.

Every file may carry an :class:`~storg.wire.attrs.ObjectAttrs` (defined,
with its codec, in :mod:`storg.wire.attrs` and re-exported here): they ride
in :class:`~storg.wire.files.FileInfo` and in the commands here that write
files, and the state machine keeps them in a file's packed record (see
:mod:`storg.fsm.records`).

Type bytes (helper B of issue 18): 14-31 state machine commands, 130-149
client requests and replies.  The layouts of the older commands are left
as they were, so a log written before these commands still applies; new
behaviour comes in new commands.
"""

from __future__ import annotations

# Re-exported: the object frames' attributes (their home is storg.wire.attrs).
from storg.wire.attrs import MAX_ATTRS_BYTES as MAX_ATTRS_BYTES
from storg.wire.attrs import NO_ATTRS as NO_ATTRS
from storg.wire.attrs import ObjectAttrs as ObjectAttrs
from storg.wire.attrs import composite_parts as composite_parts
from storg.wire.attrs import decode_attrs as decode_attrs
from storg.wire.attrs import encode_attrs as encode_attrs
from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import (
    BOOL,
    BYTES32,
    ID,
    SHA256,
    STR16,
    U64,
    ListOf,
    Nested,
    layout,
    register_struct,
)

# --- client requests and replies (130-149) ---------------------------------------------


@layout(U64, STR16, U64, U64, BOOL, STR16, STR16, Nested(ObjectAttrs))
@record
class PutStartObject:
    """``PutStart`` with attributes and conditions (if_absent, if_match SHA-256, if_match_etag).

    The rest of the upload is the same; the node fills ``attrs.etag`` with
    the MD5 it computed if it is empty.
    """

    request_id: int
    path: str
    client_id: int
    seq: int
    if_absent: bool = False
    if_match: str = ""
    if_match_etag: str = ""
    attrs: ObjectAttrs = NO_ATTRS


@layout(U64)
@record
class PutAbort:
    """Drop the upload ``request_id`` of this connection: nothing is committed (its chunks are collected)."""

    request_id: int


@layout(U64, U64, SHA256, Nested(ObjectAttrs))
@record
class PutEndObject:
    """``PutEnd`` that also gives the put's final attributes, in place of those of its start.

    The S3 gateway learns an aws-chunked body's checksum only from the
    trailer, after the last byte: sent here, it goes into the put's own
    entry (one commit, no second write).  The conditions stay the start's;
    the node fills ``attrs.etag`` with its MD5 if it is empty.  A frame of
    its own, not a field added to ``PutEnd``, so that the PutEnd every
    other put sends keeps its layout.
    """

    request_id: int
    size: int
    sha256: str
    attrs: ObjectAttrs


@layout(U64, STR16, STR16, U64, U64, BOOL, Nested(ObjectAttrs))
@record
class CopyAttrsRequest:
    """Copy the file ``src`` to ``dst`` with new attributes (S3 CopyObject with REPLACE); ``src == dst`` allowed."""

    request_id: int
    src: str
    dst: str
    client_id: int
    seq: int
    force: bool
    attrs: ObjectAttrs


@layout(U64, U64, U64, STR16, ListOf(STR16), Nested(ObjectAttrs), STR16, BOOL, STR16)
@record
class ComposeRequest:
    """Build ``dst`` from the files ``parts`` in order (no bytes move), then remove the tree ``remove``."""

    request_id: int
    client_id: int
    seq: int
    dst: str
    parts: tuple[str, ...]
    attrs: ObjectAttrs
    remove: str = ""
    if_absent: bool = False
    if_match_etag: str = ""


@layout(ID, STR16, ID, U64)
@record
class S3Key:
    """An S3 access key as listed: never its secret."""

    id: str
    name: str
    role: str
    created_ns: int


@layout(U64, U64, U64, ID, STR16, ID, STR16)
@record
class S3KeyCreateRequest:
    """Record a key; the client library generated ``key_id`` and ``secret`` (with ``secrets``)."""

    request_id: int
    client_id: int
    seq: int
    key_id: str
    name: str
    role: str
    secret: str


@layout(U64, U64, U64, ID)
@record
class S3KeyRevokeRequest:
    request_id: int
    client_id: int
    seq: int
    key_id: str


@layout(U64)
@record
class S3KeyListRequest:
    request_id: int


@layout(U64, ListOf(Nested(S3Key)))
@record
class S3KeyListReply:
    request_id: int
    keys: tuple[S3Key, ...]


@layout(U64, U64)
@record
class S3KeyDone:
    """A key command applied at log index ``index``."""

    request_id: int
    index: int


# --- state machine commands (14-31) ----------------------------------------------------


@layout(BOOL, STR16, STR16, Nested(ObjectAttrs), BYTES32)
@record
class PutObjectCommand:
    """A put command (``PutFileCommand`` or ``PutInlineCommand``, encoded) with attributes and conditions.

    The conditions are checked when the entry applies (so two racing
    writers cannot both win): ``if_absent``, ``if_match`` (the stored
    SHA-256), ``if_match_etag`` (the stored ``attrs.etag``).  The inner
    command carries the session.
    """

    if_absent: bool
    if_match: str
    if_match_etag: str
    attrs: ObjectAttrs
    command: bytes


@layout(U64, U64, U64, STR16, STR16, BOOL, Nested(ObjectAttrs))
@record
class CopyAttrsCommand:
    client_id: int
    seq: int
    modified_ns: int
    src: str
    dst: str
    force: bool
    attrs: ObjectAttrs


@layout(U64, U64, U64, STR16, ListOf(STR16), Nested(ObjectAttrs), STR16, BOOL, STR16)
@record
class ComposeCommand:
    """dst = the parts' chunks in order, SHA-256 composite; then rm -r ``remove``; one entry."""

    client_id: int
    seq: int
    modified_ns: int
    dst: str
    parts: tuple[str, ...]
    attrs: ObjectAttrs
    remove: str
    if_absent: bool
    if_match_etag: str


@layout(U64, U64, U64, ID, STR16, ID, STR16)
@record
class S3KeyCreateCommand:
    client_id: int
    seq: int
    created_ns: int
    key_id: str
    name: str
    role: str
    secret: str


@layout(U64, U64, ID)
@record
class S3KeyRevokeCommand:
    client_id: int
    seq: int
    key_id: str


_TYPE_BYTES: dict[int, type] = {
    14: PutObjectCommand, 15: CopyAttrsCommand, 16: ComposeCommand,
    17: S3KeyCreateCommand, 18: S3KeyRevokeCommand,
    130: PutStartObject, 131: PutAbort, 132: CopyAttrsRequest, 133: ComposeRequest,
    134: S3KeyCreateRequest, 135: S3KeyRevokeRequest, 136: S3KeyListRequest, 137: S3KeyListReply,
    138: S3KeyDone, 139: PutEndObject,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
