"""The client protocol over blocking sockets: storgctl's driver, which never imports Twisted.

A storgctl process makes one request and exits, so what it pays for is
start-up: importing Twisted's reactor costs it ten times its request.
This driver runs the same protocol (:mod:`storg.net.protocol`: framing,
reply matching, put and get streams and their checks, sessions, the retry
policy) over the standard library's :mod:`socket` and :mod:`ssl`, one
request at a time per connection.

TLS (:mod:`storg.client.stdlib_tls`) makes the checks the Twisted client
makes; a refusal is a :class:`TLSRefusedError`, which the retry policy
treats as final once every node has refused.

The methods of :class:`BlockingClient` are coroutines that never suspend
(they block inside), so storgctl's command functions, written against
the Twisted client's coroutines, run unchanged on either driver:
:func:`run_now` drives one to its end without an event loop.

The get path reads each GetData payload with ``recv_into`` straight into
one of a few reused buffers, writes it with ``os.write`` and hands the same
buffer to a hashing thread (hashlib releases the GIL on large buffers, so
hashing overlaps with the next read): no payload is copied by Python.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, BinaryIO

from storg.client import localfile
from storg.client.errors import ClusterUnavailable, LocalError
from storg.client.localfile import AtomicFile, DownloadSink, LocalSource
from storg.client.stdlib_tls import BlockingTLS, TLSRefusedError, describe_ssl_error
from storg.net.errors import ProtocolViolation, ServerError
from storg.net.protocol import (
    FRAME_HEADER,
    Deadline,
    GetCheck,
    GetStream,
    PutStream,
    Requests,
    RetryPolicy,
    SessionPool,
    check_not_inside,
    frame_bytes,
    new_client_id,
    small_put_limit,
    split_address,
    status_row,
    unreachable_row,
)
from storg.paths import normalize_path, normalize_prefix
from storg.wire import MAX_FRAME_BYTES, StatusReply, StatusRequest
from storg.wire.files import (
    FileInfo,
    GetRequest,
    LsReply,
    LsRequest,
    PutData,
    PutEnd,
    PutStart,
    RmRequest,
    StatRequest,
)

__all__ = ["BlockingClient", "BlockingTLS", "TLSRefusedError", "run_now"]

MAX_PIECE = MAX_FRAME_BYTES - 1024
"""Never trust a node's max_frame beyond what one frame can carry."""

GET_BUFFERS = 4
"""Receive buffers of a get in rotation: one being filled, the others being hashed."""

_GET_DATA = 48
"""GetData's type byte (storg.wire.files): its payload is read straight into a buffer."""
_GET_DATA_HEAD = struct.Struct(">BBQI")
"""GetData's body up to its payload: version, type, request id, payload length."""

Progress = Callable[[int, "int | None"], None]


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never suspends (every BlockingClient method), without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a blocking command suspended: it awaited something that is not blocking")


# --- one connection -----------------------------------------------------------------------------

class Connection:
    """A blocking connection to one node's client port; one request at a time.

    Every wait is bounded by the deadline passed in (``socket.timeout``
    when it passes).  A TLS failure on a read before any reply came is a
    refusal of our certificate (TLS 1.3 says so only after the handshake).
    """

    def __init__(self, address: str, tls: BlockingTLS | None, timeout: float,
                 expected_node: str | None = None) -> None:
        host, port = split_address(address)
        self.address = address
        self.requests: Requests[object] = Requests()
        self.answered = False
        self._head = bytearray(FRAME_HEADER.size)
        # An ASCII host as bytes: getaddrinfo encodes a str with the idna codec, whose import
        # (with stringprep's tables) costs a short-lived storgctl more than resolving the address.
        # (typeshed types the host as str only; create_connection passes it to getaddrinfo, which takes bytes.)
        dialled: Any = host.encode("ascii") if host.isascii() else host
        sock = socket.create_connection((dialled, port), timeout=max(timeout, 0.01))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock: Any = sock if tls is None else tls.wrap(sock, expected_node)
        except BaseException:
            sock.close()
            raise
        self._ssl_error: type[Exception] | None = None if tls is None else tls.ssl.SSLError

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- sending ----------------------------------------------------------------------

    def send(self, *frames: Any, timeout: float) -> None:
        """Write ``frames`` in order; small ones in one write, a large payload as it is."""
        pieces: list[bytes] = []
        for frame in frames:
            pieces += frame_bytes(frame)
        self.sock.settimeout(max(timeout, 0.01))
        small: list[bytes] = []
        for piece in pieces:
            if len(piece) < 64 * 1024:
                small.append(piece)
                continue
            if small:
                self._sendall(b"".join(small))
                small = []
            self._sendall(piece)
        if small:
            self._sendall(b"".join(small))

    def _sendall(self, data: bytes | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._lost(exc)

    # --- receiving --------------------------------------------------------------------

    def _recv_into(self, view: memoryview) -> None:
        """Fill ``view`` from the socket exactly (no read-ahead past a frame)."""
        while view.nbytes:
            try:
                n = self.sock.recv_into(view)
            except OSError as exc:
                self._lost(exc)
            if n == 0:
                raise ConnectionError("the node closed the connection")
            view = view[n:]

    def _lost(self, exc: OSError) -> Any:
        if isinstance(exc, socket.timeout):
            raise exc
        if self._ssl_error is not None and isinstance(exc, self._ssl_error) and not self.answered:
            eof = type(exc).__name__ in ("SSLEOFError", "SSLZeroReturnError", "SSLSyscallError")
            if not eof:
                raise TLSRefusedError(f"TLS: the node ended the connection: {describe_ssl_error(exc)}") \
                    from None
        raise ConnectionError(f"connection to the node was lost: {exc}") from None

    def read_length(self, timeout: float) -> int:
        self.sock.settimeout(max(timeout, 0.01))
        with memoryview(self._head) as view:
            self._recv_into(view)
        (length,) = FRAME_HEADER.unpack(self._head)
        if length > MAX_FRAME_BYTES or length < 2:
            raise ProtocolViolation(f"a frame of {length} bytes from the node")
        return length

    def read_body(self, length: int) -> bytearray:
        body = bytearray(length)
        with memoryview(body) as view:
            self._recv_into(view)
        return body

    def reply(self, timeout: float) -> tuple[object, Any]:
        """The next frame for an open request: (handler, frame or ServerError); late frames skipped."""
        while True:
            body = self.read_body(self.read_length(timeout))
            routed = self.requests.route(body)
            self.answered = True
            if routed is not None:
                return routed

    def call(self, make: Callable[[int], Any], deadline: Deadline) -> Any:
        """One request, one reply frame (or its ServerError, raised)."""
        request_id = self.requests.new_id()
        token = object()
        self.requests.add(request_id, token)
        self.send(make(request_id), timeout=deadline.remaining())
        _, reply = self.reply(deadline.remaining())
        self.requests.forget(request_id, token)
        if isinstance(reply, ServerError):
            raise reply
        return reply


# --- the client ---------------------------------------------------------------------------------

class BlockingClient:
    """A cluster's client for one short-lived process: put, get, ls, stat, rm and status.

    The retry loop is the protocol's :class:`RetryPolicy`, as in
    :class:`storg.client.api.StorgClient`, and the errors are the same
    classes, so storgctl maps both drivers' failures to the same exits.
    """

    def __init__(self, addresses: list[str], *, timeout: float = 30.0, tls: BlockingTLS | None = None) -> None:
        if not addresses:
            raise ValueError("no cluster address given")
        self.addresses = list(addresses)
        self.timeout = timeout
        self.tls = tls
        self._connections: dict[tuple[str, str | None], Connection] = {}
        """By address and the node it must be (None: any node of the CA)."""
        self._leader_guess = self.addresses[0]
        self.client_id = new_client_id()
        self.sessions = SessionPool(self.client_id)

    def connection(self, address: str, timeout: float, expected_node: str | None = None) -> Connection:
        conn = self._connections.get((address, expected_node))
        if conn is None:
            conn = Connection(address, self.tls, min(self.timeout, timeout), expected_node)
            self._connections[address, expected_node] = conn
        return conn

    def _drop(self, address: str, expected_node: str | None = None) -> None:
        conn = self._connections.pop((address, expected_node), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for address, node in list(self._connections):
            self._drop(address, node)

    def retrying(self, attempt: Callable[[Connection, Deadline], Any], *, leader: bool = True) -> Any:
        """Run ``attempt(conn, deadline)`` on one node after another until it succeeds (see RetryPolicy)."""
        deadline = Deadline(time.monotonic, self.timeout)
        policy = RetryPolicy(self.addresses, self._leader_guess, deadline, leader=leader)
        while True:
            target = policy.begin()
            try:
                conn = self.connection(target, policy.connect_timeout())
                result = attempt(conn, deadline)
                if leader:
                    self._leader_guess = target
                return result
            except ServerError as exc:
                if exc.whole_connection:
                    self._drop(target)
                pause = policy.on_server_error(exc)
            except TimeoutError:
                self._drop(target)
                pause = policy.on_timeout()
            except TLSRefusedError as exc:
                self._drop(target)
                pause = policy.on_tls_refused(exc)
            except (ConnectionError, ProtocolViolation, OSError) as exc:
                self._drop(target)
                pause = policy.on_lost(exc)
            if pause > 0:
                time.sleep(pause)

    # --- status ---------------------------------------------------------------------------

    def _ask_status(self, address: str, timeout: float, expected_node: str | None = None) -> StatusReply:
        deadline = Deadline(time.monotonic, timeout)
        try:
            conn = self.connection(address, timeout, expected_node)
            reply = conn.call(StatusRequest, deadline)
        except BaseException:
            self._drop(address, expected_node)
            raise
        if not isinstance(reply, StatusReply):
            raise ProtocolViolation(f"unexpected {type(reply).__name__} for a status request")
        return reply

    async def status(self) -> list[dict[str, Any]]:
        """One row per member, as each member reports itself; ``unreachable`` where none came.

        As :meth:`storg.client.api.StorgClient.status`: the member list comes
        from the first address (in order) that answers, and each member's row
        from that member.  Every address is asked at once (a thread each),
        and so is every member not among them, so one dead node costs one
        timeout, not one per row.
        """
        per_node = min(self.timeout, 3.0)
        answers: dict[str, StatusReply | BaseException] = {}
        _at_once([(a, partial(self._ask_status, a, per_node)) for a in self.addresses], answers)
        first = next((r for r in (answers[a] for a in self.addresses) if isinstance(r, StatusReply)), None)
        if first is None:
            refusals = [e for e in answers.values() if isinstance(e, TLSRefusedError)]
            if len(refusals) == len(self.addresses):
                raise refusals[0]  # our certificate, not an outage
            raise ClusterUnavailable("no node answered at " + ", ".join(self.addresses))
        members = sorted(first.members, key=lambda m: m.id)
        if not members:
            return [status_row(first)]
        # A member's own answer: the one its client address gave, if it names that member.
        mine = {m.id: answers.get(m.client) for m in members}
        missing = [m for m in members if not (isinstance(mine[m.id], StatusReply)
                                             and mine[m.id].row.id == m.id)]  # type: ignore[union-attr]
        _at_once([(m.id, partial(self._ask_status, m.client, per_node, m.id)) for m in missing], mine)
        rows = []
        for member in members:
            reply = first if member.id == first.row.id else mine[member.id]
            rows.append(status_row(reply) if isinstance(reply, StatusReply) else unreachable_row(member.id))
        return rows

    # --- files ----------------------------------------------------------------------------

    async def put(self, source: str | os.PathLike | BinaryIO, remote: str, progress: Progress | None = None,
                  *, if_absent: bool = False, if_match: str = "") -> FileInfo:
        """Store ``source`` as ``remote`` once committed (see StorgClient.put); retried with the same seq."""
        path = normalize_path(remote)
        local = LocalSource.open(source) if isinstance(source, (str, os.PathLike)) else LocalSource(source)
        session = self.sessions.acquire()
        seq = session.next_seq()
        if if_absent or if_match:
            from storg.wire.tree import PutStartIf

            def start(rid: int) -> Any:
                return PutStartIf(rid, path, session.client_id, seq, if_absent, if_match.lower())
        else:
            def start(rid: int) -> Any:
                return PutStart(rid, path, session.client_id, seq)
        interrupted = [""]
        report = progress or _no_progress

        def attempt(conn: Connection, deadline: Deadline) -> FileInfo:
            if not local.can_restart():
                raise ClusterUnavailable(
                    f"the upload was interrupted ({interrupted[0] or 'leader changed'}) "
                    "and its source cannot be read again")
            local.rewind()
            try:
                return _put_attempt(conn, deadline, local, start, report)
            except LocalError:
                raise
            except Exception as exc:
                interrupted[0] = str(exc) or type(exc).__name__
                raise

        try:
            return self.retrying(attempt)
        finally:
            self.sessions.release(session)
            local.close()

    async def get(self, remote: str, sink: str | os.PathLike | BinaryIO, stale: bool = False,
                  progress: Progress | None = None) -> FileInfo:
        """Fetch ``remote`` into ``sink`` (a local path, written atomically, or a binary stream), verified.

        The bytes go to the sink's file descriptor with ``os.write`` (to its
        ``write`` if it has none).  On a lost node the get starts over
        elsewhere if nothing was written yet or the sink can be rewound; a
        local path is replaced only once the whole verified content is on disk.
        """
        path = normalize_path(remote)
        atomic = None
        if isinstance(sink, (str, os.PathLike)):
            atomic = AtomicFile(sink)
            target = DownloadSink(atomic.f, sync=True)
        else:
            target = DownloadSink(sink, sync=_is_regular(sink))
        report = progress or _no_progress

        def attempt(conn: Connection, deadline: Deadline) -> FileInfo:
            if not target.can_restart():
                raise ClusterUnavailable("the node was lost after part of the file was written out")
            target.restart()
            return _get_attempt(conn, deadline, path, stale, target, report)

        try:
            info = self.retrying(attempt, leader=False)
            if atomic is not None:
                atomic.commit()
            return info
        finally:
            if atomic is not None:
                atomic.discard()

    async def ls(self, prefix: str = "/", stale: bool = False) -> list[FileInfo]:
        """Every file at or below the folder ``prefix``, sorted by path (chunks left empty)."""
        normal = normalize_prefix(prefix)

        def attempt(conn: Connection, deadline: Deadline) -> list[FileInfo]:
            request_id = conn.requests.new_id()
            token = object()
            conn.requests.add(request_id, token)
            conn.send(LsRequest(request_id, normal, stale), timeout=deadline.remaining())
            files: list[FileInfo] = []
            while True:
                _, frame = conn.reply(deadline.remaining())
                if isinstance(frame, ServerError):
                    raise frame
                if not isinstance(frame, LsReply):
                    raise ProtocolViolation(f"unexpected {type(frame).__name__} during ls")
                files.extend(frame.files)
                deadline.extend()
                if not frame.more:
                    conn.requests.forget(request_id, token)
                    return files

        return self.retrying(attempt, leader=False)

    async def stat(self, remote: str, stale: bool = False) -> FileInfo:
        """A file's metadata with its chunks and their holders; NotFoundError if absent."""
        path = normalize_path(remote)
        return self.retrying(lambda conn, deadline: conn.call(
            lambda rid: StatRequest(rid, path, stale), deadline).info, leader=False)

    async def rm(self, remote: str) -> int:
        """Delete ``remote``; the log index of the removal (a retry reuses the seq: applied once)."""
        path = normalize_path(remote)
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = self.retrying(lambda conn, deadline: conn.call(
                lambda rid: RmRequest(rid, path, session.client_id, seq), deadline))
        finally:
            self.sessions.release(session)
        return reply.version


    async def mv(self, src: str, dst: str, *, force: bool = False) -> int:
        """Rename a file or folder in one entry; how many files moved (as StorgClient.mv)."""
        from storg.wire.tree import MoveRequest

        source, target = normalize_path(src), normalize_path(dst)
        check_not_inside(source, target)
        return self._tree_call(lambda rid, client, seq: MoveRequest(rid, source, target, client, seq, force))

    async def cp(self, src: str, dst: str, *, recursive: bool = False, force: bool = False) -> int:
        """Copy on the servers, sharing chunks; how many files were copied (as StorgClient.cp)."""
        from storg.wire.tree import CopyRequest

        source, target = normalize_path(src), normalize_path(dst)
        check_not_inside(source, target)
        return self._tree_call(
            lambda rid, client, seq: CopyRequest(rid, source, target, client, seq, recursive, force))

    async def rm_tree(self, prefix: str) -> int:
        """Delete the file at ``prefix`` and everything below the folder, in one entry."""
        from storg.wire.tree import RemoveTreeRequest

        normal = normalize_prefix(prefix)
        return self._tree_call(lambda rid, client, seq: RemoveTreeRequest(rid, normal, client, seq))

    def _tree_call(self, make: Callable[[int, int, int], Any]) -> int:
        """One tree command on the leader with a session (a retry replays the first outcome)."""
        session = self.sessions.acquire()
        seq = session.next_seq()
        try:
            reply = self.retrying(lambda conn, deadline: conn.call(
                lambda rid: make(rid, session.client_id, seq), deadline))
        finally:
            self.sessions.release(session)
        return int(reply.files)


def _at_once(calls: list[tuple[str, Callable[[], Any]]], into: dict[str, Any]) -> None:
    """Run each ``(key, call)`` in a thread of its own; ``into[key]`` is its result or its exception."""

    def run(key: str, call: Callable[[], Any]) -> None:
        try:
            into[key] = call()
        except Exception as exc:
            into[key] = exc

    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _no_progress(done: int, total: int | None) -> None:
    pass


def _is_regular(f: BinaryIO) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


# --- one attempt of a put -------------------------------------------------------------------------

def _put_attempt(conn: Connection, deadline: Deadline, local: LocalSource, start: Callable[[int], Any],
                 progress: Progress) -> FileInfo:
    import hashlib

    request_id = conn.requests.new_id()
    token = object()
    conn.requests.add(request_id, token)
    small = None
    limit = small_put_limit(None)  # one request per connection: no PutReady seen before
    if local.size is not None and local.size <= limit and local.seekable:
        small = local.read_whole(limit)
    if small is not None:
        # The whole put in one round trip: PutStart, PutData, PutEnd in one write.
        stream = PutStream(small_size=len(small))
        progress(0, len(small))
        frames = [start(request_id)]
        if small:
            frames.append(PutData(request_id, small))
        frames.append(PutEnd(request_id, len(small), hashlib.sha256(small).hexdigest()))
        conn.send(*frames, timeout=deadline.remaining())
        while True:
            _, frame = conn.reply(deadline.remaining())
            if isinstance(frame, ServerError):
                raise frame
            if stream.frame(frame):
                conn.requests.forget(request_id, token)
                deadline.extend()
                progress(len(small), len(small))
                return frame.info
    stream = PutStream()
    conn.send(start(request_id), timeout=deadline.remaining())
    _, frame = conn.reply(deadline.remaining())
    if isinstance(frame, ServerError):
        raise frame
    if stream.frame(frame) or stream.ready is None:
        raise ProtocolViolation(f"unexpected {type(frame).__name__} before PutReady")
    piece = min(stream.ready.max_frame, MAX_PIECE)
    deadline.extend()
    hasher = hashlib.sha256()
    sent = 0
    progress(0, local.size)
    while True:
        data = local.read_and_hash(piece, hasher)
        if not data:
            break
        _refusal_pending(conn, deadline.remaining())
        conn.send(PutData(request_id, data), timeout=deadline.timeout)
        sent += len(data)
        deadline.extend()
        progress(sent, local.size)
    conn.send(PutEnd(request_id, sent, hasher.hexdigest()), timeout=deadline.remaining())
    while True:
        _, frame = conn.reply(max(deadline.remaining(), 0.0))
        if isinstance(frame, ServerError):
            raise frame
        if stream.frame(frame):
            conn.requests.forget(request_id, token)
            return frame.info


def _refusal_pending(conn: Connection, timeout: float) -> None:
    """Raise a node's early answer to an upload (a refusal) instead of writing on into a full socket."""
    import select

    sock = conn.sock
    pending = getattr(sock, "pending", None)
    if (pending is not None and pending()) or select.select([sock], [], [], 0)[0]:
        _, frame = conn.reply(timeout)
        if isinstance(frame, ServerError):
            raise frame
        raise ProtocolViolation(f"unexpected {type(frame).__name__} during a put")


# --- one attempt of a get ---------------------------------------------------------------------------

class _Hasher:
    """Hashes received buffers in a thread of its own, in order; a buffer is free again once hashed."""

    def __init__(self, check: GetCheck, buffers: int) -> None:
        self.check = check
        self.work: queue.Queue[memoryview | None] = queue.Queue()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(buffers):
            self.free.put(bytearray(0))  # sized on first use, to the node's frames
        self.thread = threading.Thread(target=self._run, name="get-hasher", daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    def _run(self) -> None:
        update = self.check.hasher.update
        while True:
            item = self.work.get()
            if item is None:
                return
            try:
                update(item)
            except BaseException as exc:  # never lose it: finish() raises it
                self.error = exc
            finally:
                self.free.put(item.obj)  # type: ignore[arg-type]  # the bytearray the view is of
                item.release()

    def finish(self) -> None:
        self.work.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _get_attempt(conn: Connection, deadline: Deadline, path: str, stale: bool, sink: DownloadSink,
                 progress: Progress) -> FileInfo:
    request_id = conn.requests.new_id()
    token = object()
    conn.requests.add(request_id, token)
    conn.send(GetRequest(request_id, path, stale), timeout=deadline.remaining())
    check = GetCheck(path)
    stream = GetStream(check)
    try:
        sink.f.flush()
    except (OSError, ValueError) as exc:
        raise LocalError(f"writing the output failed: {exc}") from None
    try:
        fd: int | None = sink.f.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None  # an in-memory sink: its write()
    write = partial(_write_all, fd) if fd is not None else partial(_write_to, sink)
    hasher: _Hasher | None = None
    syncer: threading.Thread | None = None
    written = synced = 0
    head = bytearray(_GET_DATA_HEAD.size)
    try:
        while True:
            length = conn.read_length(deadline.remaining())
            if length > _GET_DATA_HEAD.size:
                with memoryview(head) as view:
                    conn._recv_into(view)
                _, type_byte, rid, size = _GET_DATA_HEAD.unpack(head)
                if (type_byte == _GET_DATA and rid == request_id and hasher is not None
                        and size == length - _GET_DATA_HEAD.size):
                    # A payload: straight into a free buffer, written, then hashed beside the next read.
                    conn.answered = True
                    check.data(size)
                    buf = hasher.free.get()
                    if len(buf) < size:
                        buf = bytearray(size)
                    view = memoryview(buf)[:size]
                    conn._recv_into(view)
                    write(view)
                    written += size
                    sink.dirty = True
                    hasher.work.put(view)
                    deadline.extend()
                    progress(written, check.info.size if check.info else None)
                    if (sink.sync and written - synced >= localfile.SYNC_EVERY
                            and (syncer is None or not syncer.is_alive())):
                        synced = written
                        syncer = threading.Thread(target=sink.sync_now, name="get-sync", daemon=True)
                        syncer.start()
                    continue
                body = head + conn.read_body(length - _GET_DATA_HEAD.size)
            else:
                body = conn.read_body(length)
            # Any other frame decodes whole: GetStart, GetEnd, an error, a late or a bad frame.
            routed = conn.requests.route(body)
            conn.answered = True
            if routed is None:
                continue
            _, frame = routed
            if isinstance(frame, ServerError):
                raise frame
            kind = stream.frame(frame)  # raises ProtocolViolation for a frame out of place
            deadline.extend()
            if kind == "start":
                progress(0, frame.info.size)
                hasher = _Hasher(check, GET_BUFFERS)
            elif kind == "end":
                break
        conn.requests.forget(request_id, token)
        if hasher is None:
            raise ProtocolViolation("a get ended before its GetStart")
        finishing, hasher = hasher, None
        finishing.finish()
        return check.finish(written)
    finally:
        if hasher is not None:
            hasher.finish()
        if syncer is not None:
            syncer.join()


def _write_to(sink: DownloadSink, view: memoryview) -> None:
    try:
        sink.f.write(view)
    except (OSError, ValueError) as exc:
        raise LocalError(f"writing the output failed: {exc}") from None


def _write_all(fd: int, view: memoryview) -> None:
    """os.write the whole view (a pipe takes less at a time); a LocalError if the output fails."""
    try:
        while view.nbytes:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise LocalError(f"writing the output failed: {exc.strerror or exc}") from None
