"""Chunk bytes off the reactor thread: the local store in a thread pool, and other nodes' stores.

Every chunk write is a write, an fsync, a rename and a folder fsync; every
read re-hashes a megabyte.  Both run in a dedicated pool (``LocalChunks.run``), apart from the
Raft log's single storage thread, so a burst of chunk traffic never delays
a Raft fsync (and so an election).

Other nodes' chunks are reached through their client ports (``ChunkGet``;
the leader's writes are ``ChunkPutAfter``, sent by
:mod:`storg.server.files.replication`), one kept-open connection per node: bulk bytes never queue
behind heartbeats on the peer connections.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from storg.net.connection import PLAIN, RequestConnection
from storg.node.executor import Submit
from storg.storage.chunks import ChunkStore
from storg.storage.errors import ChunkNotFoundError, CorruptionError
from storg.wire.chunks import ChunkData, ChunkGet, ChunkPinQuery, ChunkPinReply

log = Logger(namespace="storg.chunks")


class ChunkUnavailable(Exception):
    """No intact copy of a chunk could be read from any holder tried."""


class LocalChunks:
    """The node's own ChunkStore, every call in a thread pool."""

    def __init__(self, store: ChunkStore, run: Submit) -> None:
        self.store = store
        self.run = run
        """Runs a blocking call on the chunk pool (a PoolExecutor of the assembly's)."""

    def get(self, chunk_hash: str) -> defer.Deferred:
        """Verified bytes; fails with ChunkNotFoundError or CorruptionError."""
        return self.run(self.store.get, chunk_hash)

    def hash(self, data: bytes) -> defer.Deferred:
        return self.run(lambda: hashlib.sha256(data).hexdigest())


def _verified_bytes(data: bytes | memoryview, chunk_hash: str) -> bytes | None:
    """``data`` as bytes if it hashes to ``chunk_hash``, else None (runs in a thread)."""
    if hashlib.sha256(data).hexdigest() != chunk_hash:
        return None
    return data if isinstance(data, bytes) else bytes(data)


class RemoteChunks:
    """Other nodes' chunk stores, through their client ports."""

    def __init__(self, reactor: Any, address_of: Callable[[str], str | None], hasher: Submit,
                 timeout: float = 30.0, connect_to: Callable[..., Any] = PLAIN) -> None:
        self.reactor = reactor
        self._connect = connect_to
        """``connect_to(reactor, address, timeout=, node=)``: the node's dialer (TLS demanding that node)."""
        self.hasher = hasher
        self.address_of = address_of
        self.timeout = timeout
        self._connections: dict[str, RequestConnection] = {}

    @defer.inlineCallbacks
    def connection(self, node_id: str):
        conn = self._connections.get(node_id)
        if conn is not None and conn.connected:
            return conn
        address = self.address_of(node_id)
        if not address:
            raise ChunkUnavailable(f"no client address known for {node_id}")
        conn = yield defer.Deferred.fromCoroutine(self._connect(self.reactor, address, timeout=5.0, node=node_id))
        self._connections[node_id] = conn
        return conn

    @defer.inlineCallbacks
    def get(self, node_id: str, chunk_hash: str):
        """The chunk's bytes from ``node_id``, verified here against the hash."""
        conn = yield self.connection(node_id)
        d = conn.request(lambda rid: ChunkGet(rid, chunk_hash))
        d.addTimeout(self.timeout, self.reactor)
        reply = yield d
        if not isinstance(reply, ChunkData) or reply.hash != chunk_hash:
            raise ChunkUnavailable(f"{node_id} answered {type(reply).__name__} to a chunk get")
        # A megabyte of hashing is milliseconds: not on the reactor thread.
        data = yield self.hasher(_verified_bytes, reply.data, chunk_hash)
        if data is None:
            raise ChunkUnavailable(f"{node_id} sent bytes that do not match chunk {chunk_hash}")
        return data

    @defer.inlineCallbacks
    def pinned(self, node_id: str, hashes: list[str]):
        """The subset of ``hashes`` the leader ``node_id`` has pinned for a live upload or repair."""
        conn = yield self.connection(node_id)
        d = conn.request(lambda rid: ChunkPinQuery(rid, tuple(hashes)))
        d.addTimeout(self.timeout, self.reactor)
        reply = yield d
        if not isinstance(reply, ChunkPinReply):
            raise ChunkUnavailable(f"{node_id} answered {type(reply).__name__} to a pin query")
        return frozenset(reply.pinned)

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


class Chunks:
    """Local and remote chunk access for the file service."""

    def __init__(self, node_id: str, local: LocalChunks, remote: RemoteChunks) -> None:
        self.node_id = node_id
        self.local = local
        self.remote = remote

    @defer.inlineCallbacks
    def read(self, chunk_hash: str, holders: Iterable[str]):
        """Verified bytes from this node if it has an intact copy, else from the holders in turn."""
        holders = list(holders)
        order = ([self.node_id] if self.node_id in holders else []) + \
            [h for h in holders if h != self.node_id]
        if self.node_id not in order:
            order.insert(0, self.node_id)  # a copy may be here even if not recorded
        problems = []
        for holder in order:
            try:
                if holder == self.node_id:
                    data = yield self.local.get(chunk_hash)
                else:
                    data = yield self.remote.get(holder, chunk_hash)
                return data
            except (ChunkNotFoundError, CorruptionError, ChunkUnavailable) as exc:
                if isinstance(exc, CorruptionError):
                    log.warn("corrupt copy of chunk {h} on {node}: {why}", h=chunk_hash,
                             node=holder, why=exc)
                problems.append(f"{holder}: {exc}")
            except Exception as exc:  # a holder down or slow: try the next one
                problems.append(f"{holder}: {exc!r}")
        raise ChunkUnavailable(f"no intact copy of chunk {chunk_hash}: " + "; ".join(problems))
