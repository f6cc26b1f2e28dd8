"""Request handlers of the tree operations: mv, cp and rm -r, each proposed as one command.

Nothing is decided here: the handler turns the request into its command
(stamped with the leader's clock, as puts are) and proposes it; the state
machine checks and applies it (see :mod:`storg.fsm.tree`), and its answer,
or refusal, goes back to the client.  A follower's proposal fails with
NotLeader, which the client port turns into a redirect.  None of these
adds a byte to any node's chunk store, so none is refused on a full disk:
they are how space is freed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg.node.raft_node import RaftNode
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.server.client_port import ClientConnection, RequestError
from storg.wire import CODEC, ErrorCode
from storg.wire.tree import (
    CopyCommand,
    CopyRequest,
    MoveCommand,
    MoveRequest,
    RemoveTreeCommand,
    RemoveTreeRequest,
    TreeDone,
)


class TreeService:
    """mv, cp and rm -r on the client port."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {MoveRequest: self.move, CopyRequest: self.copy, RemoveTreeRequest: self.remove_tree}

    def move(self, req: MoveRequest, conn: ClientConnection) -> defer.Deferred:
        src, dst = _path(req.src), _path(req.dst)
        return self._propose(req.request_id, MoveCommand(req.client_id, req.seq, time.time_ns(), src, dst,
                                                         req.force))

    def copy(self, req: CopyRequest, conn: ClientConnection) -> defer.Deferred:
        src, dst = _path(req.src), _path(req.dst)
        return self._propose(req.request_id, CopyCommand(req.client_id, req.seq, time.time_ns(), src, dst,
                                                         req.recursive, req.force))

    def remove_tree(self, req: RemoveTreeRequest, conn: ClientConnection) -> defer.Deferred:
        try:
            prefix = normalize_prefix(req.prefix)
        except InvalidPath as exc:
            raise RequestError(ErrorCode.BAD_REQUEST, f"invalid prefix: {exc}") from None
        return self._propose(req.request_id, RemoveTreeCommand(req.client_id, req.seq, time.time_ns(), prefix))

    def _propose(self, request_id: int, command: object) -> defer.Deferred:
        d = self.node.propose(CODEC.encode(command))
        return d.addCallback(lambda files: TreeDone(request_id, files))


def _path(text: str) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}") from None
