"""Request handlers of the object operations: copy with attributes, compose, S3 access keys.

As for the tree operations, nothing is decided here: each request becomes
its command, stamped with the leader's clock, and the state machine
(:mod:`storg.fsm.objects`) checks and applies it, conditions included.
The key list is a linearizable read (ReadIndex) of the applied key table,
without the secrets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg.fsm.objects import MAX_PARTS, S3_ROLES
from storg.fsm.records import pack_attrs
from storg.node.raft_node import RaftNode
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.server.client_port import ClientConnection, RequestError
from storg.wire import CODEC, CodecError, ErrorCode
from storg.wire.files import PutDone
from storg.wire.objects import (
    ComposeCommand,
    ComposeRequest,
    CopyAttrsCommand,
    CopyAttrsRequest,
    ObjectAttrs,
    S3KeyCreateCommand,
    S3KeyCreateRequest,
    S3KeyDone,
    S3KeyListReply,
    S3KeyListRequest,
    S3KeyRevokeCommand,
    S3KeyRevokeRequest,
)
from storg.wire.tree import TreeDone


class ObjectService:
    """Copy with attributes, compose and S3 keys on the client port."""

    def __init__(self, node: RaftNode, fsm: Any) -> None:
        self.node = node
        self.fsm = fsm

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {CopyAttrsRequest: self.copy_attrs, ComposeRequest: self.compose,
                S3KeyCreateRequest: self.key_create, S3KeyRevokeRequest: self.key_revoke,
                S3KeyListRequest: self.key_list}

    def copy_attrs(self, req: CopyAttrsRequest, conn: ClientConnection) -> defer.Deferred:
        src, dst = _path(req.src), _path(req.dst)
        _check_attrs(req.attrs)
        command = CopyAttrsCommand(req.client_id, req.seq, time.time_ns(), src, dst, req.force, req.attrs)
        d = self.node.propose(CODEC.encode(command))
        return d.addCallback(lambda files: TreeDone(req.request_id, files))

    def compose(self, req: ComposeRequest, conn: ClientConnection) -> defer.Deferred:
        dst = _path(req.dst)
        if not req.parts or len(req.parts) > MAX_PARTS:
            raise RequestError(ErrorCode.BAD_REQUEST, f"a compose takes 1 to {MAX_PARTS} parts, not {len(req.parts)}")
        parts = tuple(_path(p) for p in req.parts)
        remove = ""
        if req.remove:
            try:
                remove = normalize_prefix(req.remove)
            except InvalidPath as exc:
                raise RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}") from None
        _check_attrs(req.attrs)
        command = ComposeCommand(req.client_id, req.seq, time.time_ns(), dst, parts, req.attrs, remove,
                                 req.if_absent, req.if_match_etag)
        try:
            body = CODEC.encode(command)
        except CodecError as exc:
            raise RequestError(ErrorCode.LIMIT_EXCEEDED, f"the compose is too large: {exc}") from None
        d = self.node.propose(body)
        return d.addCallback(lambda info: PutDone(req.request_id, info))

    def key_create(self, req: S3KeyCreateRequest, conn: ClientConnection) -> defer.Deferred:
        if req.role not in S3_ROLES:
            raise RequestError(ErrorCode.BAD_REQUEST, f"role {req.role!r} is not one of {', '.join(S3_ROLES)}")
        if not req.key_id.isalnum() or len(req.secret) < 20:
            raise RequestError(ErrorCode.BAD_REQUEST, "an S3 key needs an alphanumeric id and a secret "
                               "of at least 20 characters")
        command = S3KeyCreateCommand(req.client_id, req.seq, time.time_ns(), req.key_id, req.name, req.role,
                                     req.secret)
        d = self.node.propose(CODEC.encode(command))
        return d.addCallback(lambda index: S3KeyDone(req.request_id, index))

    def key_revoke(self, req: S3KeyRevokeRequest, conn: ClientConnection) -> defer.Deferred:
        d = self.node.propose(CODEC.encode(S3KeyRevokeCommand(req.client_id, req.seq, req.key_id)))
        return d.addCallback(lambda index: S3KeyDone(req.request_id, index))

    @defer.inlineCallbacks
    def key_list(self, req: S3KeyListRequest, conn: ClientConnection):
        yield self.node.read_index()
        return S3KeyListReply(req.request_id, tuple(self.fsm.s3_keys()))


def _check_attrs(attrs: ObjectAttrs) -> None:
    try:
        pack_attrs(attrs)
    except CodecError as exc:
        raise RequestError(ErrorCode.LIMIT_EXCEEDED, str(exc)) from None


def _path(text: str) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}") from None
