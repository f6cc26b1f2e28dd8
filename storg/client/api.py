"""The client library's entry point: a cluster, not a single node.

:class:`StorgClient` knows a list of client addresses, keeps one connection
per node it has talked to, and spreads questions such as ``status`` over
every member.  Waiting for a leader or a quorum is bounded by ``timeout``;
a transfer that keeps moving is not (see :class:`~storg.client.transfer.Deadline`).

Files: :meth:`StorgClient.put`, :meth:`~StorgClient.get`, :meth:`~StorgClient.ls`,
:meth:`~StorgClient.stat`, :meth:`~StorgClient.rm`.  Cluster operations:
:meth:`~StorgClient.members`, :meth:`~StorgClient.member_add`,
:meth:`~StorgClient.member_remove`, :meth:`~StorgClient.leader_transfer`.  Errors are the classes of
:mod:`storg.client.errors`, one per storgctl exit status.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.internet import error as net_error

from storg.client.download import AtomicFile, Download, DownloadSink
from storg.client.errors import (
    BadRequest,
    ClusterUnavailable,
    CompactedError,
    IntegrityError,
    LocalError,
    NotFoundError,
    PermissionDenied,
    ProtocolViolation,
    ServerError,
)
from storg.client.streams import GetStream, PutStream
from storg.client.transfer import Deadline, Progress, Watchdog
from storg.client.upload import Upload, UploadSource, open_put, start_frame
from storg.config import LimitTuning
from storg.net.connection import PLAIN, Dialer, RequestConnection, TLSHandshakeFailed
from storg.net.protocol import (
    MAX_INTERRUPTIONS,
    STATUS_KEYS,
    RetryPolicy,
    Session,
    SessionPool,
    check_not_inside,
    new_client_id,
    status_row,
    unreachable_row,
)
from storg.node.executor import reactor_pool
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.wire import ErrorCode, ProbeRead, ProbeWrite, StatusReply, StatusRequest
from storg.wire.admin import (
    LeaderTransferDone,
    LeaderTransferRequest,
    MemberAddProgress,
    MemberAddRequest,
    MemberChanged,
    MemberInfo,
    MemberListRequest,
    MemberRemoveRequest,
)
from storg.wire.batch import BatchFile, GetBatchReply, GetBatchRequest, PutBatchRequest
from storg.wire.files import FileInfo, LsReply, LsRequest, RmRequest, StatRequest
from storg.wire.objects import (
    NO_ATTRS,
    ComposeRequest,
    CopyAttrsRequest,
    ObjectAttrs,
    S3Key,
    S3KeyCreateRequest,
    S3KeyListRequest,
    S3KeyRevokeRequest,
)
from storg.wire.record import record_fields
from storg.wire.tree import CopyRequest, MoveRequest, RemoveTreeRequest, WatchEvent, WatchRequest

_KEY_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

__all__ = [
    "MAX_INTERRUPTIONS",
    "STATUS_KEYS",
    "BadRequest",
    "ClusterUnavailable",
    "IntegrityError",
    "InvalidPath",
    "LocalError",
    "NotFoundError",
    "ServerError",
    "Session",
    "SessionPool",
    "StorgClient",
]

RETRYABLE = (
    net_error.ConnectError, net_error.ConnectionClosed, defer.TimeoutError, defer.CancelledError,
    ProtocolViolation, ConnectionError,
)
"""Failures of one node or connection: the operation is tried again on another node."""

WATCH_SILENCE = 10.0
"""Seconds without a frame (nodes send a progress mark every 2 s) after which a watch takes its
node for lost and resumes on another."""

Attempt = Callable[[RequestConnection, Deadline], Awaitable[Any]]


class StorgClient:
    """A cluster's client: connections kept open, many requests in flight at once.

    Each write carries a session's ``client_id`` and a ``seq`` that grows
    with each write of that session; a retry of one write reuses both, so
    the cluster's session table applies it once however often it is sent.
    ``client_id`` is the first session's (the only one unless writes overlap).
    """

    def __init__(self, addresses: list[str], *, reactor: Any = None, timeout: float = 30.0,
                 tls: Any = None, max_uploads: int = LimitTuning().max_uploads_per_connection,
                 dialer: Dialer | None = None, read_home: str | None = None) -> None:
        """``tls``: a :class:`storg.net.credentials.TLSCredentials` (storgctl's ``--ca/--cert/--key``);
        every connection then demands a node certificate from that CA, and shows ours.
        ``dialer``: how connections are opened, instead of the one ``tls`` makes (the gateway's
        :class:`~storg.net.connection.LocalDialer` reaches its own node through memory).
        ``read_home``: the address reads start at, instead of the node that last acted as
        leader (the gateway reads from its own node; any node serves linearizable reads).
        ``max_uploads``: puts open at once (more wait their turn); the nodes' default limit."""
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        if not addresses:
            raise ValueError("no cluster address given")
        self.addresses = list(addresses)
        self.dialer = dialer if dialer is not None else PLAIN if tls is None else Dialer(tls)
        self.reactor = reactor
        self.timeout = timeout
        self._connections: dict[str, RequestConnection] = {}
        self._leader_guess = self.addresses[0]
        self.read_home = read_home
        self.client_id = new_client_id()
        self.sessions = SessionPool(self.client_id)
        # All uploads of this client ride on one connection to the leader, and a node
        # refuses more than limits.max_uploads_per_connection open at once: wait instead.
        self._upload_slots = defer.DeferredSemaphore(max_uploads)

    async def connection(self, address: str, timeout: float | None = None) -> RequestConnection:
        conn = self._connections.get(address)
        if conn is not None and conn.usable:
            return conn
        conn = await self.dialer(self.reactor, address, timeout=min(self.timeout, timeout or 5.0))
        self._connections[address] = conn
        return conn

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    async def call_leader(self, make: Any, timeout: float | None = None) -> Any:
        """Send ``make(request_id)`` to the leader, following redirects, until ``timeout``.

        NOT_LEADER answers name the leader's client address when the node
        knows it; otherwise, and on connection failures, the next address
        is tried, with a short pause once every address has been tried.
        Raises ClusterUnavailable when the deadline passes, and ServerError
        for any other refusal.
        """
        async def attempt(conn: RequestConnection, deadline: Deadline) -> Any:
            d = conn.request(make)
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)  # it may pass meanwhile
            return await d

        return await self.retrying(attempt, timeout=timeout)

    async def retrying(self, attempt: Attempt, *, timeout: float | None = None,
                       leader: bool = True) -> Any:
        """Run ``attempt(conn, deadline)`` on one node after another until it succeeds.

        It starts at the node that last acted as leader, follows NOT_LEADER
        hints, and moves on after UNAVAILABLE or a connection failure, with
        a short pause after each round of every address.  ``deadline`` is
        pushed back by attempts that make progress, so only waiting (for a
        leader, a quorum, a node) counts against ``timeout``; once it has
        passed, ClusterUnavailable.  Any other error ends the operation.
        """
        deadline = Deadline(self.reactor, self.timeout if timeout is None else timeout)
        # Which node next, when to pause and when to give up: the client protocol's policy.
        start = self.read_home if not leader and self.read_home is not None else self._leader_guess
        policy = RetryPolicy(self.addresses, start, deadline, leader=leader)
        while True:
            target = policy.begin()
            try:
                conn = await self.connection(target, timeout=policy.connect_timeout())
                result = await attempt(conn, deadline)
                if leader:
                    self._leader_guess = target
                return result
            except ServerError as exc:
                if exc.whole_connection:
                    self._connections.pop(target, None)
                pause = policy.on_server_error(exc)
            except (defer.TimeoutError, net_error.TimeoutError):
                pause = policy.on_timeout()
            except TLSHandshakeFailed as exc:
                self._connections.pop(target, None)
                pause = policy.on_tls_refused(exc)
            except RETRYABLE as exc:
                self._connections.pop(target, None)
                pause = policy.on_lost(exc)
            if pause > 0:
                await _pause(self.reactor, pause)

    async def probe_write(self, payload: bytes = b"", timeout: float | None = None) -> int:
        """Commit a write that changes nothing; returns its log index."""
        reply = await self.call_leader(lambda rid: ProbeWrite(rid, payload), timeout)
        return reply.index

    async def probe_read(self, timeout: float | None = None) -> int:
        """Confirm a linearizable read point on the leader; returns its index."""
        reply = await self.call_leader(ProbeRead, timeout)
        return reply.index

    async def _ask_status(self, address: str, timeout: float) -> StatusReply:
        conn = await self.connection(address, timeout)
        d = conn.request(StatusRequest)
        d.addTimeout(timeout, self.reactor)
        return await d

    async def status(self) -> list[dict[str, Any]]:
        """One row per member, as each member reports itself; ``unreachable`` where none came.

        The member list comes from the first node that answers; each member
        is then asked directly, all at once, so one dead node costs one
        timeout, not one per row.
        """
        per_node = min(self.timeout, 3.0)
        first: StatusReply | None = None
        tls_refusals: list[TLSHandshakeFailed] = []
        for address in self.addresses:
            try:
                first = await self._ask_status(address, per_node)
                break
            except TLSHandshakeFailed as exc:
                tls_refusals.append(exc)
            except Exception:
                continue
        if first is None:
            if len(tls_refusals) == len(self.addresses):
                raise tls_refusals[0]  # our certificate, not an outage (see retrying)
            raise ClusterUnavailable("no node answered at " + ", ".join(self.addresses))
        members = sorted(first.members, key=lambda m: m.id) or []

        async def row_of(member) -> dict[str, Any]:
            if member.id == first.row.id:
                return status_row(first)
            try:
                return status_row(await self._ask_status(member.client, per_node))
            except Exception:
                return unreachable_row(member.id)

        if not members:
            return [status_row(first)]
        rows = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(row_of(m)) for m in members], consumeErrors=True)
        return list(rows)

    async def scrub(self, start: bool = False) -> list[dict[str, Any]]:
        """Each member's scrub and repair counters (``storgctl scrub``); ``start`` begins a pass on each.

        Members that do not answer get a row with only ``id`` and
        ``scrubbing: None``.
        """
        from storg.wire.files import ScrubStatusReply, ScrubStatusRequest

        per_node = min(self.timeout, 3.0)
        rows = await self.status()

        async def row_of(row: dict[str, Any]) -> dict[str, Any]:
            empty = {"id": row["id"], "scrubbing": None}
            if row["role"] == "unreachable" or "client" not in row:
                return empty
            try:
                conn = await self.connection(row["client"], per_node)
                d = conn.request(lambda rid: ScrubStatusRequest(rid, start))
                d.addTimeout(per_node, self.reactor)
                reply = await d
            except PermissionDenied:
                raise  # our certificate's role, not the node: every row would say the same
            except Exception:
                return empty
            if not isinstance(reply, ScrubStatusReply):
                return empty
            return {name: getattr(reply, name) for name in record_fields(reply) if name != "request_id"} | \
                {"id": reply.node_id}

        clients = await self._member_clients()
        for row in rows:
            if row["id"] in clients:
                row["client"] = clients[row["id"]]
        try:
            found = await defer.gatherResults(
                [defer.Deferred.fromCoroutine(row_of(r)) for r in rows], consumeErrors=True)
        except defer.FirstError as exc:
            exc.subFailure.raiseException()
        for row in found:
            row.pop("node_id", None)
        return list(found)

    async def _member_clients(self) -> dict[str, str]:
        """Member id -> client address, from the first node that answers a status request."""
        per_node = min(self.timeout, 3.0)
        for address in self.addresses:
            try:
                reply = await self._ask_status(address, per_node)
            except Exception:
                continue
            clients = {m.id: m.client for m in reply.members}
            return clients or {reply.row.id: address}
        raise ClusterUnavailable("no node answered at " + ", ".join(self.addresses))

    # --- files -------------------------------------------------------------------

    async def put(self, source: str | os.PathLike | BinaryIO, remote: str,
                  progress: Progress | None = None, *, if_absent: bool = False,
                  if_match: str = "", attrs: ObjectAttrs | None = None,
                  if_match_etag: str = "") -> FileInfo:
        """Store ``source`` (a local path or a binary stream) as ``remote``; returns its FileInfo.

        ``if_absent`` (only if nothing is at ``remote``) and ``if_match`` (only
        if the file at ``remote`` has this SHA-256) make it a compare-and-swap,
        decided by the state machine when the entry applies: of two puts
        racing with ``if_absent``, exactly one succeeds; the other raises
        ConflictError, and so does its retry.  ``if_match_etag``: only if the
        stored ``attrs.etag`` is this.  ``attrs``: the file's attributes (the
        node fills in the ETag, the MD5 of the content, when it is empty;
        every put gets one).

        Returns once the cluster has committed the file.  After a lost
        connection or a leader change the whole upload is sent again with
        the same session numbers, which a file can be and a pipe cannot:
        a stream already partly read then gives ClusterUnavailable.
        Raises InvalidPath (before sending anything), LocalError,
        BadRequest, IntegrityError or ClusterUnavailable.
        """
        path = normalize_path(remote)
        if isinstance(source, (str, os.PathLike)):
            upload_source = UploadSource.open(source)
        else:
            upload_source = UploadSource(source)
        await self._upload_slots.acquire()
        session = self.sessions.acquire()
        upload = Upload(self.reactor, upload_source, path, session.client_id, session.next_seq(),
                        progress, if_absent=if_absent, if_match=if_match.lower(), attrs=attrs,
                        if_match_etag=if_match_etag)
        try:
            return await self.retrying(upload.attempt)
        finally:
            self.sessions.release(session)
            upload_source.close()
            self._upload_slots.release()

    def put_stream(self, remote: str, *, size: int | None = None, attrs: ObjectAttrs | None = None,
                   if_absent: bool = False, if_match_etag: str = "") -> PutStream:
        """A put whose bytes the caller pushes (:class:`~storg.client.streams.PutStream`).

        The leader is found (retrying as any request does) while the first
        bytes are written; ``finish`` commits, ``abort`` drops it.  ``size``,
        if given, is checked at ``finish``.  Raises InvalidPath at once.
        """
        path = normalize_path(remote)
        session = self.sessions.acquire()
        seq = session.next_seq()
        released = [False]
        acquired = [False]

        def release() -> None:
            if not released[0]:
                released[0] = True
                self.sessions.release(session)
                if acquired[0]:
                    self._upload_slots.release()

        def make(rid: int) -> Any:
            return start_frame(rid, path, session.client_id, seq, if_absent=if_absent,
                               attrs=attrs if attrs is not None else NO_ATTRS, if_match_etag=if_match_etag)

        def opening(conn: RequestConnection, deadline: Deadline) -> defer.Deferred:
            d = defer.Deferred.fromCoroutine(open_put(conn, deadline, make))
            return d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)  # a leader that never answers

        async def open_() -> Any:
            await self._upload_slots.acquire()
            acquired[0] = True
            if released[0]:  # aborted while waiting for a slot: give it back and open nothing
                acquired[0] = False
                self._upload_slots.release()
                raise ProtocolViolation("the put stream was aborted")
            try:
                return await self.retrying(opening)
            except BaseException:
                release()
                raise

        opened = defer.Deferred.fromCoroutine(open_())
        return PutStream(self.reactor, opened, size, release)

    async def get_stream(self, remote: str, write: Callable[[bytes], Any], *, offset: int = 0,
                         length: int | None = None, stale: bool = False,
                         on_start: Callable[[FileInfo, int], object] = lambda info, index: None) -> FileInfo:
        """Hand ``length`` bytes of ``remote`` from ``offset`` (None: to the end) to ``write``.

        ``on_start(info, read_index)`` is called once, before any byte.
        ``write`` may return a Deferred (the connection is not read until it
        fires).  Verified as :mod:`storg.client.streams` says; a lost
        connection resumes at the next offset on another node.
        """
        path = normalize_path(remote)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length cannot be negative")
        getter = GetStream(self.reactor, path, write, offset=offset, length=length, stale=stale,
                           on_start=on_start)
        return await self.retrying(getter.attempt, leader=False)

    async def stat_at(self, remote: str, stale: bool = False) -> tuple[FileInfo, int]:
        """A file's metadata and the read index that served it; NotFoundError if absent."""
        path = normalize_path(remote)

        async def attempt(conn: RequestConnection, deadline: Deadline) -> tuple[FileInfo, int]:
            d = conn.request(lambda rid: StatRequest(rid, path, stale))
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)
            reply = await d
            return reply.info, reply.index

        return await self.retrying(attempt, leader=False)

    async def ls_page(self, prefix: str, *, start_after: str = "", limit: int = 1000,
                      stale: bool = False) -> tuple[list[FileInfo], int, bool]:
        """Files whose path starts with the string ``prefix`` (say ``/bucket/photos/2024-``), in
        path order, after ``start_after``, at most ``limit`` (1 to 1000): (page, read index, more)."""
        if not prefix.startswith("/"):
            prefix = "/" + prefix
        if "\x00" in prefix:
            raise InvalidPath("a listing prefix contains a NUL character")
        if not 1 <= limit <= 1000:
            raise ValueError(f"a page holds 1 to 1000 files, not {limit}")

        async def attempt(conn: RequestConnection, deadline: Deadline) -> tuple[list[FileInfo], int, bool]:
            d = conn.request(lambda rid: LsRequest(rid, prefix, stale, start_after, limit))
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)
            reply = await d
            return list(reply.files), reply.index, reply.more

        return await self.retrying(attempt, leader=False)

    async def compose(self, dst: str, parts: list[str], *, attrs: ObjectAttrs, remove: str = "",
                      if_absent: bool = False, if_match_etag: str = "") -> FileInfo:
        """Build ``dst`` from the files ``parts`` in order, in one entry (no bytes move).

        Its SHA-256 is the composite of the parts' (storg.net.verify),
        ``attrs.parts`` their sizes; the tree ``remove`` (the upload's
        folder) goes in the same entry.  Conditions are decided at apply:
        ConflictError if they fail; NotFoundError if a part is missing.
        """
        target = normalize_path(dst)
        names = tuple(normalize_path(p) for p in parts)
        folder = normalize_prefix(remove) if remove else ""
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = await self.call_leader(lambda rid: ComposeRequest(
                rid, session.client_id, seq, target, names, attrs, folder, if_absent, if_match_etag))
        finally:
            self.sessions.release(session)
        return reply.info

    async def s3_key_create(self, name: str, role: str) -> tuple[str, str]:
        """Create an S3 access key with ``role``; returns (access key id, secret), shown only now.

        Both are made here with :mod:`secrets` (an id of 20 upper-case
        letters and digits, as AWS's look, and a 40-character secret), so
        the secret crosses the network once, to the leader, over the
        client connection (TLS when the cluster has it).
        """
        import secrets  # here: a storgctl that makes no key never imports it (start-up time)

        key_id = "SK" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(18))
        secret = secrets.token_urlsafe(30)[:40]
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            await self.call_leader(lambda rid: S3KeyCreateRequest(rid, session.client_id, seq, key_id,
                                                                  name, role, secret))
        finally:
            self.sessions.release(session)
        return key_id, secret

    async def s3_key_list(self) -> list[S3Key]:
        """Every S3 access key (id, name, role, created_ns), without secrets, by id."""
        reply = await self.call_leader(S3KeyListRequest)
        return list(reply.keys)

    async def s3_key_revoke(self, key_id: str) -> int:
        """Revoke a key; returns the log index.  NotFoundError if there is no such key."""
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = await self.call_leader(lambda rid: S3KeyRevokeRequest(rid, session.client_id, seq, key_id))
        finally:
            self.sessions.release(session)
        return reply.index

    async def get(self, remote: str, sink: str | os.PathLike | BinaryIO, stale: bool = False,
                  progress: Progress | None = None) -> FileInfo:
        """Fetch ``remote`` into ``sink`` (a local path, written atomically, or a binary stream).

        Any node may serve it.  The content is checked against the file's
        SHA-256 (IntegrityError on a mismatch); a local path is only
        replaced once the whole verified content is on disk.  On a lost
        node the get starts over elsewhere if nothing was written yet or
        the sink can be rewound.
        """
        path = normalize_path(remote)
        if not isinstance(sink, (str, os.PathLike)):
            download = Download(self.reactor, DownloadSink(sink), path, stale, progress)
            return await self.retrying(download.attempt, leader=False)
        atomic = AtomicFile(sink)
        try:
            download = Download(self.reactor, DownloadSink(atomic.f, sync=True), path, stale, progress)
            info = await self.retrying(download.attempt, leader=False)
            # An fsync of what may be a gigabyte: never on the reactor thread.
            await reactor_pool(self.reactor)(atomic.commit)
            return info
        finally:
            atomic.discard()

    async def ls(self, prefix: str = "/", stale: bool = False) -> list[FileInfo]:
        """Every file at or below the folder ``prefix``, sorted by path (chunks left empty)."""
        normal = normalize_prefix(prefix)

        async def attempt(conn: RequestConnection, deadline: Deadline) -> list[FileInfo]:
            files: list[FileInfo] = []
            watchdog = Watchdog(self.reactor, conn, deadline.remaining())

            def on_page(frame: Any) -> bool:
                if not isinstance(frame, LsReply):
                    raise ProtocolViolation(f"unexpected {type(frame).__name__} during ls")
                files.extend(frame.files)
                deadline.extend()
                watchdog.reset(deadline.timeout)
                return not frame.more

            stream = conn.request_stream(lambda rid: LsRequest(rid, normal, stale), on_page)
            try:
                await stream.done
            finally:
                watchdog.cancel()
            return files

        return await self.retrying(attempt, leader=False)

    async def stat(self, remote: str, stale: bool = False) -> FileInfo:
        """A file's metadata with its chunks and their holders; NotFoundError if absent."""
        path = normalize_path(remote)

        async def attempt(conn: RequestConnection, deadline: Deadline) -> FileInfo:
            d = conn.request(lambda rid: StatRequest(rid, path, stale))
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)  # it may pass meanwhile
            return (await d).info

        return await self.retrying(attempt, leader=False)

    async def rm(self, remote: str) -> int:
        """Delete ``remote``; returns the log index of the removal. NotFoundError if absent.

        A retry after a leader change reuses the seq, so a removal that
        committed the first time answers success, not "not found".
        """
        path = normalize_path(remote)
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = await self.call_leader(lambda rid: RmRequest(rid, path, session.client_id, seq))
        finally:
            self.sessions.release(session)
        return reply.version

    async def mv(self, src: str, dst: str, *, force: bool = False) -> int:
        """Rename the file or folder ``src`` to ``dst`` in one entry; returns how many files moved.

        Readers see the whole tree at ``src`` or the whole tree at ``dst``,
        never a mix.  ConflictError if a file would be replaced (unless
        ``force``); BadRequest for ``dst`` at or inside ``src``; NotFoundError
        if nothing is at ``src``.  A retry after a leader change replays the
        first outcome.
        """
        source, target = normalize_path(src), normalize_path(dst)
        check_not_inside(source, target)
        return await self._tree_call(lambda rid, s, q: MoveRequest(rid, source, target, s, q, force))

    async def cp(self, src: str, dst: str, *, recursive: bool = False, force: bool = False,
                 attrs: ObjectAttrs | None = None) -> int:
        """Copy ``src`` (a folder too with ``recursive``) to ``dst`` on the servers; no file bytes travel.

        The copies refer to the very same chunks (their reference counts go
        up), so a copy costs an entry, whatever the size.  Returns how many
        files were copied; errors as :meth:`mv`.  ``attrs``: the copy of the
        one file ``src`` gets them instead of the source's (S3 CopyObject with
        REPLACE); ``src == dst`` is then allowed and replaces only the attributes.
        """
        source, target = normalize_path(src), normalize_path(dst)
        if attrs is not None:
            if recursive:
                raise ValueError("a copy with attributes is of one file, not recursive")
            if target.startswith(source + "/"):
                check_not_inside(source, target)
            return await self._tree_call(
                lambda rid, s, q: CopyAttrsRequest(rid, source, target, s, q, force, attrs))
        check_not_inside(source, target)
        return await self._tree_call(
            lambda rid, s, q: CopyRequest(rid, source, target, s, q, recursive, force))

    async def rm_tree(self, prefix: str) -> int:
        """Delete the file at ``prefix`` and everything below the folder ``prefix``, in one entry.

        Returns how many files went; NotFoundError if there were none.
        """
        normal = normalize_prefix(prefix)
        return await self._tree_call(lambda rid, s, q: RemoveTreeRequest(rid, normal, s, q))

    async def watch(self, prefix: str, on_event: Callable[[WatchEvent], object], *, start: int = 0,
                    limit: int | None = None) -> int:
        """Call ``on_event`` for each change under the folder ``prefix``, in commit order, from index ``start``.

        ``start`` 0 means from now.  Runs until ``limit`` events were
        delivered (then returns the index of the last), or an error:
        CompactedError when ``start`` (or the resume point) is older than
        the serving node's ring (list the prefix again, then watch from
        the index the message names), ClusterUnavailable when no node
        answers within ``timeout``.  A lost node is not an error: the watch
        resumes on another node at the index of the last event delivered,
        skipping the events of that index already delivered (every node
        produces the same events for an index, in the same order), so none
        is lost or repeated.
        """
        normal = normalize_prefix(prefix)
        state = {"next": start, "last": 0, "at_last": 0, "delivered": 0}
        compacted: set[str] = set()
        """Addresses that said COMPACTED: the error is final once every node has."""

        async def attempt(conn: RequestConnection, deadline: Deadline) -> int:
            resume = state["last"] or state["next"]
            skip = [state["at_last"] if state["last"] else 0]

            def on_frame(frame: Any) -> bool:
                if not isinstance(frame, WatchEvent):
                    raise ProtocolViolation(f"unexpected {type(frame).__name__} during a watch")
                deadline.extend()
                watchdog.reset(WATCH_SILENCE)
                if frame.kind == 0:
                    # A progress mark: everything up to frame.index has been sent. It is the
                    # resume point from now on, unless events of a later index came already.
                    if frame.index >= max(state["last"], state["next"] - 1):
                        state["next"], state["last"], state["at_last"] = frame.index + 1, 0, 0
                    return False
                if frame.index == state["last"] and skip[0] > 0:
                    skip[0] -= 1  # already delivered before the node was lost
                    return False
                if frame.index != state["last"]:
                    state["last"], state["at_last"] = frame.index, 0
                state["at_last"] += 1
                state["delivered"] += 1
                on_event(frame)
                return limit is not None and state["delivered"] >= limit

            watchdog = Watchdog(self.reactor, conn, WATCH_SILENCE)
            stream = conn.request_stream(lambda rid: WatchRequest(rid, normal, resume), on_frame)
            try:
                await stream.done
            except CompactedError as exc:
                # Each node's ring starts when the node did: another may still hold the index.
                compacted.update(a for a, c in self._connections.items() if c is conn)
                if len(compacted) < len(self.addresses):
                    raise ServerError(ErrorCode.UNAVAILABLE, str(exc)) from None
                raise
            finally:
                watchdog.cancel()
            # The node would go on sending; a watch ends only with its connection.
            for address, known in list(self._connections.items()):
                if known is conn:
                    del self._connections[address]
            conn.close()
            return state["last"]

        if limit is not None and limit <= 0:
            return 0
        while True:
            before = state["delivered"]
            try:
                return await self.retrying(attempt, leader=False)
            except ClusterUnavailable:
                if state["delivered"] == before:
                    raise  # no node served anything within the timeout: give up

    async def put_batch(self, files: tuple[BatchFile, ...]) -> int:
        """Store many small files in one entry, all or none; returns the entry's log index.

        Each file is at most the inline size (4 KiB) and carries the SHA-256
        of its bytes, which the leader checks.  One session for the batch:
        a retry after a leader change replays the first outcome.  This is
        what ``put -r`` sends for small files (see storg.wire.batch).
        """
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = await self.call_leader(lambda rid: PutBatchRequest(rid, session.client_id, seq, files))
        finally:
            self.sessions.release(session)
        return reply.index

    async def get_batch(self, paths: tuple[str, ...], stale: bool = False) -> GetBatchReply:
        """Read many small files at one read index (the caller checks each file's SHA-256).

        The reply lists the files read, those that do not exist, and those
        left for an ordinary :meth:`get` (too large, or a chunk not at hand).
        """
        normal = tuple(normalize_path(p) for p in paths)

        async def attempt(conn: RequestConnection, deadline: Deadline) -> GetBatchReply:
            d = conn.request(lambda rid: GetBatchRequest(rid, normal, stale))
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)
            return await d

        return await self.retrying(attempt, leader=False)

    async def _tree_call(self, make: Callable[[int, int, int], Any]) -> int:
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = await self.call_leader(lambda rid: make(rid, session.client_id, seq))
        finally:
            self.sessions.release(session)
        return reply.files

    # --- membership and leadership -------------------------------------------------

    async def members(self) -> list[MemberInfo]:
        """The leader's membership: id, role (voter or learner), peer and client address."""
        reply = await self.call_leader(MemberListRequest)
        return list(reply.members)

    async def member_add(self, node_id: str, peer: str, client: str, *, learner: bool = False,
                         progress: Callable[[MemberAddProgress], object] | None = None,
                         ) -> MemberChanged:
        """Add ``node_id`` as a learner, wait until it caught up, then make it a voter.

        ``learner=True`` returns once it is a learner.  ``progress`` sees
        each MemberAddProgress (the learner's match against the leader's
        last index).  Waiting counts against ``timeout`` only while the
        learner makes no progress, so a long catch-up is not cut off, but a
        node that was never started is: ClusterUnavailable, and the node
        stays a learner (the same call again continues from there).
        Raises BadRequest for bad ids or addresses.
        """
        async def attempt(conn: RequestConnection, deadline: Deadline) -> MemberChanged:
            best = [-1]

            def on_frame(frame: Any) -> bool:
                if isinstance(frame, MemberAddProgress):
                    if best[0] >= 0 and frame.match > best[0]:
                        deadline.extend()
                    best[0] = max(best[0], frame.match)
                    if progress is not None:
                        progress(frame)
                    return False
                if isinstance(frame, MemberChanged):
                    return True
                raise ProtocolViolation(f"unexpected {type(frame).__name__} during member add")

            stream = conn.request_stream(
                lambda rid: MemberAddRequest(rid, node_id, peer, client, learner), on_frame)
            return await self._within(stream, deadline, lambda: ClusterUnavailable(
                f"{node_id} did not catch up within the timeout (is it running, with join: true?); "
                f"it stays a learner: the same member add continues"))

        return await self.retrying(attempt)

    async def member_remove(self, node_id: str) -> MemberChanged:
        """Remove ``node_id`` (the leader hands leadership over first if it is the one).

        NotFoundError if it is not a member.  A retry after an attempt with
        an unknown outcome that then finds the member gone reports success:
        the first attempt removed it.
        """
        unknown_outcome = [False]

        async def attempt(conn: RequestConnection, deadline: Deadline) -> MemberChanged:
            d = conn.request(lambda rid: MemberRemoveRequest(rid, node_id))
            d.addTimeout(max(deadline.remaining(), 0.0), self.reactor)  # it may pass meanwhile
            try:
                return await d
            except NotFoundError:
                if unknown_outcome[0]:
                    return MemberChanged(0, node_id, "removed", 0)
                raise
            except ServerError as exc:
                if exc.code != ErrorCode.NOT_LEADER:
                    unknown_outcome[0] = True
                raise
            except Exception:
                unknown_outcome[0] = True
                raise

        return await self.retrying(attempt)

    async def leader_transfer(self, target: str = "") -> LeaderTransferDone:
        """Hand leadership to ``target`` (or the most up-to-date voter); returns the new leader."""
        return await self.call_leader(lambda rid: LeaderTransferRequest(rid, target))

    def _within(self, stream: Any, deadline: Deadline,
                expired: Callable[[], Exception]) -> defer.Deferred:
        """``stream.done``, failed with ``expired()`` once ``deadline`` passes (it may be pushed back)."""
        call = [None]

        def check() -> None:
            if stream.finished:
                return
            left = deadline.remaining()
            if left <= 0:
                stream.abort(expired())
            else:
                call[0] = self.reactor.callLater(left, check)

        check()

        def stop(result: Any) -> Any:
            if call[0] is not None and call[0].active():
                call[0].cancel()
            return result

        return stream.done.addBoth(stop)


def _pause(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)
