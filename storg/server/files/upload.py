"""One client's put in progress on the leader: cutting, hashing, replicating, proposing.

The service (:mod:`storg.server.files.service`) keeps the uploads of each
connection; an :class:`Upload` cuts its stream into chunks, hands each to
the :class:`~storg.server.files.replication.ChunkReplicator`, hashes the
whole file in order off the reactor (:class:`SerialHasher`), and proposes
the file's entry once every chunk is stored and the hash matches.

The whole-file hash is two: the SHA-256 that names the content and the
MD5 that S3 clients expect as the ETag, fed the same pieces in the same
thread (:class:`ContentHasher`), so the MD5 costs no pass of its own.  Every
put's entry is a :class:`~storg.wire.objects.PutObjectCommand` carrying the
attributes, whose ETag is that MD5 unless the caller gave one.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.python.failure import Failure

from storg.node.executor import Submit
from storg.server.client_port import ClientConnection, RequestError
from storg.server.files.replication import ChunkReplicator
from storg.server.files.reserve import is_disk_full
from storg.server.files.upload_budget import UploadBudget
from storg.wire import CODEC, ErrorCode
from storg.wire.chunks import PutFileCommand, PutInlineCommand
from storg.wire.files import PutDone, PutEnd, PutStart
from storg.wire.objects import NO_ATTRS, ObjectAttrs, PutEndObject, PutObjectCommand, PutStartObject
from storg.wire.record import replace as replace_record
from storg.wire.tree import PutStartIf

MAX_DATA_FRAME = 1 << 20
"""Largest PutData/GetData payload a client is asked to send."""

INLINE_MAX = 4096
"""Files up to this size ride in their metadata entry (PutInlineCommand).

A put of a small file through the chunk path costs a round of chunk
writes, each with two fsyncs on every holder, before the Raft commit; in
the entry, the commit's own group-committed fsync makes the bytes durable
and the holders write them on apply, fsyncing in one batch before the log
is compacted past them.  4 KiB keeps the in-memory Raft log bounded
(``snapshot_every`` entries of at most 4 KiB each).  Measured with
benchmarks/file_bench.py: see docs/benchmarks.rst, section "Current figures".
"""




HASH_INLINE = 64 * 1024
"""An upload's first bytes up to this size are hashed on the reactor (cheap), so a small
put's digest is ready at once; past it, the whole-file hash runs in a thread."""


class SerialHasher:
    """Feeds one hasher in a thread, piece after piece in the order given.

    The whole-file SHA-256 of an upload must see the bytes in order, and a
    megabyte of it takes the reactor thread 3 to 5 ms: hashlib releases the
    GIL, so in a thread it overlaps with the reactor and the other nodes.
    """

    def __init__(self, run: Callable[..., defer.Deferred], hasher: Any) -> None:
        self.run = run  # run(fn, *args) in a thread
        self.hasher = hasher
        self._queue: deque[tuple[Any, defer.Deferred]] = deque()
        self._busy = False

    def update(self, piece: Any) -> defer.Deferred:
        """Fires once ``piece`` (and everything given before it) is hashed."""
        d: defer.Deferred = defer.Deferred()
        self._queue.append((piece, d))
        self._next()
        return d

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        piece, d = self._queue.popleft()
        self.run(self.hasher.update, piece).addBoth(self._done, d)

    def _done(self, result: Any, d: defer.Deferred) -> None:
        self._busy = False
        self._next()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)


class ContentHasher:
    """SHA-256 and MD5 of one stream, updated together (hashlib releases the GIL for both)."""

    __slots__ = ("md5", "sha")

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, piece: Any) -> None:
        self.sha.update(piece)
        self.md5.update(piece)

    def hexdigest(self) -> str:
        """The SHA-256 (the content's name); the MD5 is ``md5.hexdigest()``."""
        return self.sha.hexdigest()


class ObjectWrite(NamedTuple):
    """What a put asks beyond its bytes: conditions checked at apply, and the attributes."""

    if_absent: bool = False
    if_match: str = ""
    if_match_etag: str = ""
    attrs: ObjectAttrs = NO_ATTRS


PLAIN_WRITE = ObjectWrite()
"""A put without conditions or attributes (its ETag is still the MD5)."""


class Upload:
    """One client's put in progress on the leader.

    A PutData frame of exactly one chunk (what the client library sends)
    becomes the chunk as it is, without a copy.  The whole-file hash of all
    but a small upload's bytes runs in a :class:`SerialHasher`; a chunk
    counts against the upload window until it is both stored and hashed.
    """

    def __init__(self, replicator: ChunkReplicator, conn: ClientConnection,
                 start: PutStart | PutStartIf | PutStartObject,
                 path: str, *, chunk_size: int, window: int, hasher: Submit,
                 write: ObjectWrite = PLAIN_WRITE, budget: UploadBudget | None = None) -> None:
        self.replicator = replicator
        self.node = replicator.node
        self.chunk_size = chunk_size
        self.window = window
        """Bytes of chunks not yet stored and hashed past which the client's socket is not read."""
        self.budget = budget if budget is not None else UploadBudget(window)
        """The node's bound on all uploads' bytes in flight (storg.server.files.upload_budget)."""
        self.run_hash = hasher
        self.conn = conn
        self.start = start
        self.path = path
        self.write = write
        """Conditions and attributes: the entry is a PutObjectCommand carrying them (a
        PutEndObject replaces the attributes: the service sets them before ``finish``)."""
        self.buffer = bytearray()
        self.size = 0
        self.hasher = ContentHasher()
        self.chunk_results: list[defer.Deferred] = []
        self.in_flight = 0
        self.reading_paused = False
        self.aborted: Exception | None = None
        self.pinned: list[str] = []
        self.placed: list[tuple[str, int, str]] = []
        """(holder, size, chunk hash) of each copy placed; released when the upload is over."""
        self.ready: Any = None
        self.hashed = 0  # bytes of the stream fed to hasher on the reactor (the first ones)
        self.cut = 0  # bytes of the stream cut into chunks so far
        self.file_hasher: SerialHasher | None = None
        self.last_hash: defer.Deferred | None = None

    def data(self, data: bytes) -> None:
        if self.aborted is not None:
            return
        self.size += len(data)
        if self.file_hasher is None and self.size <= max(HASH_INLINE, INLINE_MAX):
            self.hasher.update(data)
            self.hashed = self.size
        size = self.chunk_size
        if not self.buffer and len(data) == size and isinstance(data, bytes):
            self._replicate(data)
            return
        self.buffer += data
        while len(self.buffer) >= size:
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            self._replicate(chunk)

    def _replicate(self, chunk: bytes) -> None:
        self.in_flight += len(chunk)
        self.budget.take(len(chunk))
        if not self.reading_paused and (self.in_flight > self.window or self.budget.over()):
            self.reading_paused = True
            self.conn.pause_reading()
            if self.budget.over():
                self.budget.wait(self)
        # The part of this chunk not hashed on the reactor goes to the thread, in order.
        skip = min(len(chunk), max(0, self.hashed - self.cut))
        self.cut += len(chunk)
        if self.file_hasher is None:
            self.file_hasher = SerialHasher(self.run_hash, self.hasher)
        hashed = self.file_hasher.update(memoryview(chunk)[skip:] if skip else chunk)
        self.last_hash = hashed
        d = self.replicator.replicate(chunk, self.pinned, self.placed)
        waiting = [2]

        def settled(result: Any) -> Any:
            waiting[0] -= 1
            if waiting[0] == 0:
                self._chunk_settled(None, len(chunk))
            return result

        d.addBoth(settled)
        d.addErrback(self._chunk_failed)
        hashed.addBoth(settled)
        self.chunk_results.append(d)

    def _chunk_failed(self, failure: Failure) -> Failure:
        """Holders out of space: stop storing the rest of the upload (the refusal is final)."""
        if is_disk_full(failure) and isinstance(failure.value, RequestError):
            self.abort(failure.value)
        return failure

    def _chunk_settled(self, result: Any, size: int) -> Any:
        self.in_flight -= size
        self.budget.give_back(size)
        self.budget_freed()
        return result

    def budget_freed(self) -> None:
        """Read the connection again if this upload's window and the node's budget allow it."""
        if not self.reading_paused or self.in_flight > self.window:
            return
        if self.budget.over():
            self.budget.wait(self)
            return
        self._resume()

    def _resume(self) -> None:
        self.reading_paused = False
        self.budget.forget(self)
        self.conn.resume_reading()

    def finish(self, end: PutEnd | PutEndObject) -> defer.Deferred:
        """Fires with PutDone once the file's entry is applied (or fails with the refusal)."""
        if not self.chunk_results and len(self.buffer) <= INLINE_MAX and self.aborted is None:
            # A small file: no chunk round, so no generator and DeferredList either.
            try:
                data, self.buffer = bytes(self.buffer), bytearray()
                self._check_arrival(end)
                holders = tuple(sorted(self.replicator.inline_holders(data)))
                command = PutInlineCommand(self.start.client_id, self.start.seq, time.time_ns(),
                                           self.path, data, holders)
            except Exception:
                return defer.fail()
            request_id = self.start.request_id
            d = self.node.propose(self._encode(command))
            return d.addCallback(lambda info: PutDone(request_id, info))
        return self._finish_chunked(end)

    def _check_arrival(self, end: PutEnd | PutEndObject) -> None:
        sha = self.hasher.hexdigest()
        if end.size != self.size or end.sha256 != sha:
            raise RequestError(ErrorCode.INTEGRITY,
                               f"the upload arrived as {self.size} bytes with SHA-256 {sha}; "
                               f"the client sent {end.size} bytes with SHA-256 {end.sha256}")

    @defer.inlineCallbacks
    def _finish_chunked(self, end: PutEnd | PutEndObject):
        if self.buffer:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            self._replicate(chunk)
        results = yield defer.DeferredList(self.chunk_results, consumeErrors=True)
        if self.last_hash is not None:
            yield self.last_hash  # the whole-file hash has seen every byte
        if self.aborted is not None:
            raise self.aborted
        for ok, value in results:
            if not ok:
                value.raiseException()
        self._check_arrival(end)
        command = PutFileCommand(self.start.client_id, self.start.seq, time.time_ns(), self.path,
                                 self.size, self.hasher.hexdigest(), tuple(value for _, value in results))
        info = yield self.node.propose(self._encode(command))
        return PutDone(self.start.request_id, info)

    def _encode(self, command: PutFileCommand | PutInlineCommand) -> bytes:
        """The put wrapped with its conditions and attributes, the ETag our MD5 unless given."""
        w = self.write
        attrs = w.attrs if w.attrs.etag else replace_record(w.attrs, etag=self.hasher.md5.hexdigest())
        return CODEC.encode(PutObjectCommand(w.if_absent, w.if_match, w.if_match_etag, attrs,
                                             CODEC.encode(command)))

    def abort(self, why: Exception) -> None:
        if self.aborted is None:
            self.aborted = why
            self.buffer = bytearray()
        if self.reading_paused:
            self._resume()
