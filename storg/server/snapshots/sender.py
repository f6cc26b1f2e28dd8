"""The leader's side of InstallSnapshot.

The core's SNAPSHOT message carries only the meta; the data goes first, in
bounded frames over the follower's client port (``storg.wire.snapshots``),
paced by TCP flow control, then the message goes over the peer transport.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.net.connection import PLAIN, ProtocolViolation
from storg.node.executor import Submit
from storg.node.raft_node import RaftNode
from storg.raft.types import Message, Role, SnapshotMeta
from storg.server.snapshots.data import PART_BYTES, READ_CHUNK, SnapshotUnavailable
from storg.storage.errors import CorruptionError
from storg.storage.logstore import DiskLogStore
from storg.storage.snapshot import SnapshotReader
from storg.wire.snapshots import (
    SnapshotBegin,
    SnapshotEnd,
    SnapshotOffset,
    SnapshotPart,
    SnapshotStored,
)

log = Logger(namespace="storg.snapshots")

class SnapshotSender:
    """Streams the current snapshot to followers the core wants to send it to."""

    def __init__(self, node: RaftNode, log_store: DiskLogStore, send_message: Callable[[Message], object],
                 address_of: Callable[[str], str], reactor: Any, executor: Submit, *,
                 part_bytes: int = PART_BYTES, timeout: float = 30.0, retry_delay: float = 1.0,
                 connect_to: Callable[..., Any] = PLAIN) -> None:
        self.node = node
        self.log_store = log_store
        self.send_message = send_message
        self.address_of = address_of
        self.reactor = reactor
        self._executor = executor
        self.part_bytes = part_bytes
        self.timeout = timeout
        self.retry_delay = retry_delay
        self._connect = connect_to
        self._active: dict[str, defer.Deferred] = {}
        self._connections: set[Any] = set()
        self._retries: dict[str, Any] = {}
        self._digests: dict[tuple[int, int], tuple[int, str]] = {}
        self._stopped = False
        self.sent: list[tuple[str, int, int]] = []
        """(peer, index, bytes streamed) of each snapshot delivered, for tests."""

    def send(self, msg: Message) -> None:
        """The node's on_snapshot_message sender."""
        peer = msg.to
        if self._stopped or peer in self._active or peer in self._retries:
            return  # the core waits for the report of the transfer already under way
        d = defer.Deferred.fromCoroutine(self._transfer(msg))
        self._active[peer] = d
        d.addCallbacks(self._delivered, self._failed, callbackArgs=(msg,), errbackArgs=(msg,))

    async def _transfer(self, msg: Message) -> tuple[SnapshotMeta, int, str]:
        started = time.monotonic()
        reader, size, sha = await self._executor(self._open, dict(self._digests))
        try:
            meta = reader.meta
            self._digests[(meta.index, meta.term)] = (size, sha)
            wanted = msg.snapshot or SnapshotMeta()
            if meta.index == 0 or meta.index < wanted.index:
                raise SnapshotUnavailable(f"the snapshot store holds index {meta.index}, "
                                          f"the core sends {wanted.index}")
            address = self.address_of(msg.to)
            if not address:
                raise SnapshotUnavailable(f"no client address known for {msg.to}")
            conn = await defer.Deferred.fromCoroutine(self._connect(self.reactor, address, timeout=5.0,
                                                                          node=msg.to))
            self._connections.add(conn)
            try:
                streamed = await self._stream(conn, msg, reader, size, sha)
            finally:
                self._connections.discard(conn)
                conn.close()
        finally:
            reader.close()
        log.info("{node} sent the snapshot at index {index} to {peer}: {bytes} bytes in {s:.3f} s",
                 node=self.node.node_id, index=meta.index, peer=msg.to, bytes=streamed,
                 s=time.monotonic() - started)
        return meta, streamed, sha

    def _open(self, digests: dict[tuple[int, int], tuple[int, str]]) -> tuple[SnapshotReader, int, str]:
        """Thread: a reader over the current snapshot, its size and SHA-256 (computed once per snapshot)."""
        reader = self.log_store.open_snapshot()
        if reader is None:
            raise SnapshotUnavailable("no snapshot to send")
        known = digests.get((reader.meta.index, reader.meta.term))
        if known is not None:
            return reader, known[0], known[1]
        with reader:
            sha = hashlib.sha256()
            # read() checks the header's digest at the end: a damaged file is never sent.
            while chunk := reader.read(READ_CHUNK):
                sha.update(chunk)
            path, size = reader.path, reader.size
        again = SnapshotReader(path, reader.keyring)  # from the start; fails if a newer snapshot replaced it
        return again, size, sha.hexdigest()

    async def _stream(self, conn: Any, msg: Message, reader: SnapshotReader, size: int, sha: str) -> int:
        meta = reader.meta
        first: defer.Deferred = defer.Deferred()

        def on_frame(frame: Any) -> bool:
            if isinstance(frame, SnapshotStored):
                if not first.called:
                    first.callback(None)
                return True
            if isinstance(frame, SnapshotOffset) and not first.called:
                first.callback(frame.offset)
                return False
            raise ProtocolViolation(f"unexpected {type(frame).__name__} in a snapshot transfer")

        def failed(failure: Failure) -> Failure:
            if not first.called:
                first.errback(failure)
            return failure

        stream = conn.request_stream(lambda rid: SnapshotBegin(
            rid, self.node.node_id, msg.term, meta.index, meta.term, tuple(sorted(meta.conf.voters)),
            tuple(sorted(meta.conf.learners)), size, sha), on_frame)
        stream.done.addErrback(failed)
        try:
            return await self._send_data(conn, stream, first, reader, size)
        finally:
            stream.done.addErrback(lambda _: None)  # already reported through `first` or the await

    async def _send_data(self, conn: Any, stream: Any, first: defer.Deferred, reader: SnapshotReader,
                         size: int) -> int:
        meta = reader.meta
        offset = await self._timed(first)
        streamed = 0
        if offset is not None:
            if offset > size:
                raise ProtocolViolation(f"follower claims offset {offset} of a {size}-byte snapshot")
            if offset:
                await self._executor(_skip, reader, offset)
            pos = offset
            while pos < size:
                data = await self._executor(reader.read, self.part_bytes)
                if not data:
                    raise CorruptionError(reader.path, pos, "snapshot file ended early")
                await self._timed(conn.wait_writable(stream))
                stream.send(SnapshotPart(stream.request_id, pos, data))
                pos += len(data)
                streamed += len(data)
            stream.send(SnapshotEnd(stream.request_id))
        stored = await self._timed(stream.done)
        if (stored.index, stored.term) != (meta.index, meta.term):
            raise ProtocolViolation(f"follower stored index {stored.index} term {stored.term}, "
                                    f"not {meta.index} {meta.term}")
        return streamed

    def _timed(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.timeout, self.reactor)

    def _delivered(self, result: tuple[SnapshotMeta, int, str], msg: Message) -> None:
        meta, streamed, sha = result
        self._active.pop(msg.to, None)
        core = self.node.core
        if self._stopped:
            return
        if core.role != Role.LEADER or core.term != msg.term:
            # A new term: if we lead again, the core may be waiting for a
            # transfer this one stood in for; a failure report makes it retry.
            self.node.report_snapshot(msg.to, False)
            return
        self.sent.append((msg.to, meta.index, streamed))
        # The SHA-256 of the data streamed rides in the message's context: the
        # follower installs only the data this message vouches for (receiver.py).
        self.send_message(dataclasses.replace(msg, snapshot=meta, context=bytes.fromhex(sha)))
        self.node.report_snapshot(msg.to, True)

    def _failed(self, failure: Failure, msg: Message) -> None:
        peer = msg.to
        self._active.pop(peer, None)
        if self._stopped:
            return
        kind = failure.type
        assert kind is not None  # a Failure always has one (Twisted types it optional)
        log.warn("{node}: sending the snapshot to {peer} failed, retrying in {delay} s: {why}",
                 node=self.node.node_id, peer=peer, delay=self.retry_delay,
                 why=failure.getErrorMessage() or kind.__name__)

        def retry() -> None:
            self._retries.pop(peer, None)
            self.node.report_snapshot(peer, False)

        # The core sends SNAPSHOT again as soon as it hears of the failure:
        # telling it later keeps an unreachable follower from a tight loop.
        self._retries[peer] = self.reactor.callLater(self.retry_delay, retry)

    def stop(self) -> None:
        self._stopped = True
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for conn in list(self._connections):
            conn.abort()


def _skip(reader: SnapshotReader, offset: int) -> None:
    """Thread: read past the first ``offset`` bytes (the reader hashes everything it reads)."""
    left = offset
    while left > 0:
        data = reader.read(min(READ_CHUNK, left))
        if not data:
            raise CorruptionError(reader.path, offset - left, "snapshot file ended early")
        left -= len(data)
