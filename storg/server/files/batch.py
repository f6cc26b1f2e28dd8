"""Request handlers of batched small files: ``put -r`` and ``get -r`` send many files per request.

A :class:`~storg.wire.batch.PutBatchRequest` is checked whole here (every
path valid, every file small enough to ride in the entry, every SHA-256
right) and becomes one :class:`~storg.wire.batch.PutInlineBatchCommand`:
each file an ordinary inline put with holders placed as for a single put
and its MD5 as ETag (as every put has),
the batch one entry and one session.  Nothing is decided here that the
state machine could see differently: the leader only places and stamps.

A :class:`~storg.wire.batch.GetBatchRequest` takes one read point for all
its files and reads their chunks as a single get does (the small-file
cache first, the chunk store or another holder next).  A file that is too
large for a batch, or whose chunks cannot be read at once, is left for
the client to get on its own: the ordinary get path has the retries and
the error messages.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from storg.fsm.machine import FileStoreStateMachine
from storg.node.raft_node import RaftNode
from storg.paths import InvalidPath, normalize_path
from storg.server.client_port import ClientConnection, RequestError
from storg.server.files.replication import ChunkReplicator
from storg.server.files.reserve import DiskReserve
from storg.server.files.upload import INLINE_MAX
from storg.wire import CODEC, ErrorCode
from storg.wire.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_FILES,
    BatchFile,
    GetBatchReply,
    GetBatchRequest,
    PutBatchDone,
    PutBatchRequest,
    PutInlineBatchCommand,
)
from storg.wire.chunks import PutInlineCommand
from storg.wire.files import ChunkRef
from storg.wire.objects import ObjectAttrs, PutObjectCommand

HASH_ON_REACTOR = 256 * 1024
"""A batch with at most this many bytes is hashed on the reactor (about 0.2 ms); larger, in a thread."""


class BatchService:
    """Batched puts and gets of small files on the client port."""

    def __init__(self, node: RaftNode, fsm: FileStoreStateMachine, replicator: ChunkReplicator,
                 reserve: DiskReserve, *, read_point: Callable[[bool], defer.Deferred],
                 read_chunk: Callable[[ChunkRef], defer.Deferred], in_thread: Any,
                 leader_address: Callable[[], str]) -> None:
        self.node = node
        self.fsm = fsm
        self.replicator = replicator
        self.reserve = reserve
        self.read_point = read_point
        self.read_chunk = read_chunk
        self.in_thread = in_thread  # in_thread(fn, *args) -> Deferred
        self.leader_address = leader_address

    def handlers(self) -> dict[type, Callable[[Any, ClientConnection], Any]]:
        return {PutBatchRequest: self.put_batch, GetBatchRequest: self.get_batch}

    # -- put -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def put_batch(self, req: PutBatchRequest, conn: ClientConnection):
        files = req.files
        if not files or len(files) > MAX_BATCH_FILES:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"a batch holds 1 to {MAX_BATCH_FILES} files, not {len(files)}")
        total = 0
        paths = []
        for f in files:
            if len(f.data) > INLINE_MAX:
                raise RequestError(ErrorCode.BAD_REQUEST, f"{f.path}: {len(f.data)} bytes is more than a batch "
                                   f"file may hold ({INLINE_MAX})")
            total += len(f.data)
            paths.append(_path(f.path))
        if total > MAX_BATCH_BYTES:
            raise RequestError(ErrorCode.BAD_REQUEST, f"a batch of {total} bytes is over {MAX_BATCH_BYTES}")
        if not self.node.is_leader():
            raise RequestError(ErrorCode.NOT_LEADER, "not the leader", self.leader_address())
        self.reserve.check(f"put of {len(files)} files")
        digests = yield self._hash_all([f.data for f in files], total)
        modified_ns = time.time_ns()
        commands = []
        for f, path, (digest, md5) in zip(files, paths, digests, strict=True):
            if digest != f.sha256:
                raise RequestError(ErrorCode.INTEGRITY, f"{path} arrived with SHA-256 {digest}; the client sent "
                                   f"{f.sha256}")
            holders = tuple(sorted(self.replicator.inline_holders(f.data))) if f.data else ()
            put = CODEC.encode(PutInlineCommand(0, 0, modified_ns, path, f.data, holders))
            commands.append(CODEC.encode(PutObjectCommand(False, "", "", ObjectAttrs(etag=md5), put)))
        index = yield self.node.propose(CODEC.encode(PutInlineBatchCommand(req.client_id, req.seq, tuple(commands))))
        return PutBatchDone(req.request_id, index, len(commands))

    def _hash_all(self, pieces: list[bytes], total: int) -> defer.Deferred:
        if total <= HASH_ON_REACTOR:
            return defer.succeed(_hex_digests(pieces))
        return self.in_thread(_hex_digests, pieces)

    # -- get -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def get_batch(self, req: GetBatchRequest, conn: ClientConnection):
        if len(req.paths) > MAX_BATCH_FILES:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"a batch asks for at most {MAX_BATCH_FILES} files, not {len(req.paths)}")
        paths = [_path(p) for p in req.paths]
        index = yield self.read_point(req.stale)
        if not isinstance(index, int):
            index = self.node.applied_index
        wanted: list[tuple[str, Any]] = []
        missing: list[str] = []
        left: list[str] = []
        budget = MAX_BATCH_BYTES
        for path in paths:
            info = self.fsm.get(path)
            if info is None:
                missing.append(path)
            elif info.size > budget or info.size > INLINE_MAX * 16 or info.attrs.parts:
                # A composed object's SHA-256 is of its parts' digests, not of its bytes:
                # the ordinary get verifies it part by part.
                left.append(path)
            else:
                budget -= info.size
                wanted.append((path, info))
        reads = [defer.gatherResults([self.read_chunk(ref) for ref in info.chunks], consumeErrors=True)
                 for _, info in wanted]
        results = yield defer.DeferredList(reads, consumeErrors=True)
        out: list[BatchFile] = []
        for (path, info), (ok, pieces) in zip(wanted, results, strict=True):
            if ok:
                out.append(BatchFile(path, b"".join(pieces), info.sha256))
            else:
                left.append(path)
        return GetBatchReply(req.request_id, index, tuple(out), tuple(missing), tuple(left))


def _hex_digests(pieces: list[bytes]) -> list[tuple[str, str]]:
    """Each piece's SHA-256 (its name, checked against the client's) and MD5 (its ETag, as every put's)."""
    return [(hashlib.sha256(p).hexdigest(), hashlib.md5(p, usedforsecurity=False).hexdigest()) for p in pieces]


def _path(text: str) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, f"invalid path: {exc}") from None
