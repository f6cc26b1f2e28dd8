"""The client protocol without I/O: what a client says to nodes and makes of their answers.

As h11 is for HTTP, this module holds the protocol and no socket, thread
or reactor, so two drivers share it: the Twisted one
(:class:`storg.net.connection.RequestConnection` and
:class:`storg.client.api.StorgClient`, used by nodes, benchmarks and the
gateway) and the blocking-socket one storgctl runs on
(:mod:`storg.client.blocking`, which never imports Twisted).  What is here:

* framing: :func:`frame_bytes` (a frame as byte strings to write, a large
  payload never copied) and :func:`split_address`;
* response matching: :class:`Requests` gives out request ids and routes
  each reply frame to the request it answers; an ErrorReply becomes the
  matching :class:`~storg.net.errors.ServerError`, a refusal of the whole
  connection (request id 0) is raised to the driver;
* streams: a request answered by several frames (a get, an ls, a put) has
  a handler that sees each frame; the acceptable frames of a put and a get
  are :class:`PutStream` and :class:`GetStream`, with the checks of a get
  (size, SHA-256) made by :class:`GetCheck`;
* retries with sessions: :class:`Session` and :class:`SessionPool` number a
  client's writes so that a retry applies once, and :class:`RetryPolicy`
  decides after each failed attempt which node to try next, how long to
  pause, and when to give up (``ClusterUnavailable``).

Time comes in as a clock function, never read here by itself.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from storg.net.errors import (
    ClusterUnavailable,
    IntegrityError,
    ProtocolViolation,
    ServerError,
    error_for,
)
from storg.wire import CODEC, CodecError, ErrorCode, ErrorReply, StatusReply
from storg.wire.bulk import BULK_MIN, FRAME_HEADER, bulk_frame, bulk_types, decode_bulk
from storg.wire.files import FileInfo, GetData, GetEnd, GetStart, PutDone, PutReady

__all__ = [
    "FRAME_HEADER", "MAX_INTERRUPTIONS", "STATUS_KEYS", "Deadline", "GetCheck", "GetStream", "PutStream", "Requests",
    "RetryPolicy", "Session", "SessionPool", "frame_bytes", "small_put_limit", "split_address", "status_row",
    "unreachable_row",
]

MAX_INTERRUPTIONS = 3
"""Transfers that made progress and then failed, retried at most this often per operation."""


# --- framing --------------------------------------------------------------------------------

def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def frame_bytes(obj: Any) -> list[bytes]:
    """The length-prefixed frame of ``obj`` as byte strings to write in order.

    A bulk frame (file bytes) keeps its payload as the last item, not
    copied (see :mod:`storg.wire.bulk`); anything else is encoded whole.
    """
    # The payload's size first: bulk_types() builds the node-only chunk frames, which a
    # short-lived storgctl sending small frames must not pay for.
    data = getattr(obj, "data", None)
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) >= BULK_MIN and type(obj) in bulk_types():
        return bulk_frame(obj)
    body = CODEC.encode(obj)
    return [FRAME_HEADER.pack(len(body)), body]


# --- response matching ----------------------------------------------------------------------

H = TypeVar("H")


class Requests(Generic[H]):
    """The requests open on one connection, by id, and the routing of reply frames to them.

    ``H`` is the driver's handler of one request (a Twisted Stream, a
    blocking call's state): this class only keeps them and says which one a
    frame is for.  Ids start at 1; id 0 is the connection's own.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._open: dict[int, H] = {}

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, request_id: int, handler: H) -> None:
        self._open[request_id] = handler

    def get(self, request_id: int) -> H | None:
        return self._open.get(request_id)

    def forget(self, request_id: int, handler: H) -> None:
        """Stop routing to ``handler`` (done, failed or abandoned: its late frames are dropped)."""
        if self._open.get(request_id) is handler:
            del self._open[request_id]

    def take_all(self) -> list[H]:
        """Every open request, forgotten (the connection is gone)."""
        handlers = list(self._open.values())
        self._open.clear()
        return handlers

    def __len__(self) -> int:
        return len(self._open)

    def route(self, body: bytes | bytearray) -> tuple[H, Any] | None:
        """The request a reply frame answers and what it says: a frame, or a ServerError.

        None for a frame of a request no longer open (an aborted request's
        late frames).  An ErrorReply forgets its request.  Raises
        :class:`ProtocolViolation` for a frame that is not a reply, and the
        ServerError (``whole_connection`` set) of a refusal of the whole
        connection (request id 0: too many connections).
        """
        frame = decode_reply(body)
        request_id = frame.request_id
        if request_id == 0 and isinstance(frame, ErrorReply):
            refusal = error_for(frame.code, frame.message, frame.leader)
            refusal.whole_connection = True
            raise refusal
        handler = self._open.get(request_id)
        if handler is None:
            return None
        if isinstance(frame, ErrorReply):
            del self._open[request_id]
            return handler, error_for(frame.code, frame.message, frame.leader)
        return handler, frame


def decode_reply(body: bytes | bytearray) -> Any:
    """A reply frame (with its ``request_id``); a bulk payload comes as a view. ProtocolViolation if bad."""
    try:
        frame = decode_bulk(body)
        frame.request_id  # noqa: B018  (every reply carries one)
    except (CodecError, AttributeError) as exc:
        raise ProtocolViolation(f"bad reply from node: {exc}") from None
    return frame


# --- streams ----------------------------------------------------------------------------------

SMALL_PUT = 64 * 1024
"""Sources up to this size may be put in one round trip (PutData sent before PutReady), when
they also fit in the ``max_frame`` the node gave on this connection before."""

SMALL_PUT_BLIND = 4096
"""...and up to this size even on a fresh connection: every node takes PutData frames at least
this large (a node's ``max_frame`` is MAX_DATA_FRAME, 1 MiB), so a one-off put (storgctl) saves
a round trip too."""


def small_put_limit(max_frame: int | None) -> int:
    """The largest put that may go whole with its PutStart, given the connection's last PutReady."""
    return SMALL_PUT_BLIND if max_frame is None else max(min(SMALL_PUT, max_frame), SMALL_PUT_BLIND)


class PutStream:
    """Which frames a put may receive, in order: PutReady (unless the node skips it), then PutDone.

    :meth:`frame` returns True for the terminal PutDone; anything else out
    of place is a :class:`ProtocolViolation`.  ``small``: the data was sent
    with the PutStart, before any PutReady (one round trip), so a PutReady
    whose ``max_frame`` is below it is a violation too.
    """

    def __init__(self, small_size: int | None = None) -> None:
        self.small_size = small_size
        self.ready: PutReady | None = None

    def frame(self, frame: Any) -> bool:
        if isinstance(frame, PutReady) and self.ready is None:
            if self.small_size is not None and frame.max_frame < self.small_size:
                raise ProtocolViolation(
                    f"PutReady with max_frame {frame.max_frame}, below the {self.small_size} bytes sent")
            if frame.max_frame <= 0:
                raise ProtocolViolation(f"PutReady with max_frame {frame.max_frame}")
            self.ready = frame
            return False
        if isinstance(frame, PutDone) and (self.ready is not None or self.small_size is not None):
            return True
        raise ProtocolViolation(f"unexpected {type(frame).__name__} during a put")


class GetCheck:
    """The checks of one get: no more bytes than the file has, then its size and SHA-256.

    ``hasher`` may be fed elsewhere (a thread); :meth:`finish` compares.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.info: FileInfo | None = None
        self.received = 0
        import hashlib  # here: a status or an ls never pays for OpenSSL's hashes

        self.hasher = hashlib.sha256()

    def start(self, info: FileInfo) -> None:
        from storg.net.verify import content_hasher  # here, as hashlib above

        self.info = info
        self.hasher = content_hasher(info)  # a composite (multipart) object is hashed part by part

    def data(self, size: int) -> None:
        assert self.info is not None  # GetStream checks the order
        self.received += size
        if self.received > self.info.size:
            raise IntegrityError(f"{self.path}: received more than its {self.info.size} bytes")

    def finish(self, written: int | None = None) -> FileInfo:
        """The file's metadata once ``written`` (default: received) bytes hashed to its SHA-256."""
        meta = self.info
        if meta is None:
            raise ProtocolViolation("a get ended before its GetStart")
        done = self.received if written is None else written
        if done != meta.size:
            raise IntegrityError(f"{self.path}: received {done} bytes, expected {meta.size}")
        digest = self.hasher.hexdigest()
        if digest != meta.sha256:
            raise IntegrityError(f"{self.path}: SHA-256 mismatch (got {digest}, expected {meta.sha256})")
        return meta


class GetStream:
    """Which frames a get may receive: GetStart, GetData..., GetEnd; returns the kind of each.

    :meth:`frame` returns ``"start"``, ``"data"`` (sizes checked by the
    GetCheck) or ``"end"``; anything else is a :class:`ProtocolViolation`.
    """

    def __init__(self, check: GetCheck) -> None:
        self.check = check

    def frame(self, frame: Any) -> str:
        started = self.check.info is not None
        if isinstance(frame, GetStart) and not started:
            self.check.start(frame.info)
            return "start"
        if isinstance(frame, GetData) and started:
            self.check.data(len(frame.data))
            return "data"
        if isinstance(frame, GetEnd) and started:
            return "end"
        raise ProtocolViolation(f"unexpected {type(frame).__name__} during a get")


# --- status rows -------------------------------------------------------------------------------

STATUS_KEYS = ("id", "role", "term", "leader", "commit_index", "applied_index", "last_index")
"""The keys of a status row (``storgctl --json status``), in column order."""


def status_row(reply: StatusReply) -> dict[str, Any]:
    """One member's row, as it reports itself."""
    row = reply.row
    return {key: getattr(row, key) for key in STATUS_KEYS}


def unreachable_row(member_id: str) -> dict[str, Any]:
    """The row of a member that did not answer."""
    return {key: None for key in STATUS_KEYS} | {"id": member_id, "role": "unreachable"}


# --- sessions and retries -----------------------------------------------------------------------

class Session:
    """A client session of the cluster (dissertation 6.3): one id, writes numbered 1, 2, ...

    The cluster remembers only the last seq of each session and refuses an
    older one, so a session must carry one write at a time, in order.
    """

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class SessionPool:
    """Hands each write in flight a session of its own, so concurrent writes never overlap.

    Writes one after another reuse the first session; only concurrency
    opens more, each with a fresh random id.
    """

    def __init__(self, first_id: int) -> None:
        self._free = [Session(first_id)]

    def acquire(self) -> Session:
        if self._free:
            return self._free.pop()
        return Session(new_client_id())

    def release(self, session: Session) -> None:
        self._free.append(session)


def new_client_id() -> int:
    """A random session id (63 bits, never 0), from os.urandom as secrets.randbits would be."""
    return (int.from_bytes(os.urandom(8), "big") >> 1) or 1


class Deadline:
    """How long a client may still wait; pushed back whenever a transfer makes progress.

    ``progressed`` tells the retry loop that the attempt under way moved
    something, so that its failure counts as an interrupted transfer (of
    which only a few are retried: a node failing every transfer halfway
    would otherwise keep the deadline moving forever).  ``clock`` gives
    seconds (a reactor's ``seconds``, or ``time.monotonic``).
    """

    def __init__(self, clock: Callable[[], float], timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.at = clock() + timeout
        self.progressed = False

    def remaining(self) -> float:
        return self.at - self.clock()

    def extend(self) -> None:
        self.progressed = True
        self.at = max(self.at, self.clock() + self.timeout)


class RetryPolicy:
    """Where one operation's next attempt goes, after which pause, and when to give up.

    The driver runs the loop: :meth:`begin` (raises ClusterUnavailable once
    the deadline has passed or transfers kept breaking), one attempt on
    :attr:`target`, and on failure the ``on_...`` method for it, which
    raises when the failure is final and otherwise returns the seconds to
    pause before the next :meth:`begin` (often 0).  The policy starts at
    the node that last acted as leader, follows NOT_LEADER hints, and moves
    on after UNAVAILABLE or a lost connection, pausing a little after each
    round of every address; a refusal of our certificate by every node, or
    of the connection by every node, is final at once.
    """

    def __init__(self, addresses: Iterable[str], first: str, deadline: Any, *, leader: bool = True) -> None:
        self.candidates = list(addresses)
        self.target = first
        self.deadline = deadline
        self.leader = leader
        self.failures = 0
        self.redirects = 0
        self.interruptions = 0
        self.last_error = "no answer"
        self.tls_refused: set[str] = set()
        self.refused: dict[str, ServerError] = {}
        """Nodes that refused the connection itself (too many open): asked no more this time."""

    def begin(self) -> str:
        """The node to try now; ClusterUnavailable if waiting is over."""
        if self.deadline.remaining() <= 0:
            who = "no leader" if self.leader else "no node"
            raise ClusterUnavailable(f"{who} answered within the timeout ({self.last_error})")
        if self.deadline.progressed:
            self.deadline.progressed = False
            self.interruptions += 1
            if self.interruptions > MAX_INTERRUPTIONS:
                raise ClusterUnavailable(
                    f"the transfer was interrupted {self.interruptions} times ({self.last_error})")
        return self.target

    def connect_timeout(self) -> float:
        """How long the connection to :attr:`target` may take."""
        return min(self.deadline.remaining(), 5.0)

    def on_server_error(self, exc: ServerError) -> float:
        """A node's refusal: raised unless it says to look elsewhere (NOT_LEADER, UNAVAILABLE, full)."""
        target = self.target
        if exc.whole_connection:
            # That node is full, not the cluster: try the others, and say so
            # at once when every one (or the leader we are sent to) is full.
            self.refused[target] = exc
            if set(self.candidates) <= set(self.refused):
                raise exc
            self.last_error = f"{target}: {exc}"
            self.failures += 1
            n = len(self.candidates)
            self.target = next(c for c in self.candidates[self.failures % n:] + self.candidates
                               if c not in self.refused)
            return 0.0
        if exc.code not in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE):
            raise exc
        self.last_error = f"{target}: {exc}"
        if exc.code == ErrorCode.NOT_LEADER and exc.leader in self.refused:
            raise self.refused[exc.leader] from None
        if exc.code == ErrorCode.NOT_LEADER and exc.leader and exc.leader != target:
            self.redirects += 1
            if self.redirects <= len(self.candidates):  # nodes pointing at each other: pause
                self.target = exc.leader
                return 0.0
        return self._next()

    def on_timeout(self) -> float:
        self.last_error = f"{self.target} did not answer in time"
        return self._next()

    def on_tls_refused(self, exc: Exception) -> float:
        """A certificate refused (ours there, or theirs here) is no outage: once every node has
        refused it, ``exc`` is raised at once instead of retrying until the timeout."""
        self.tls_refused.add(self.target)
        if set(self.candidates) <= self.tls_refused:
            raise exc
        self.last_error = f"{self.target}: {exc}"
        return self._next()

    def on_lost(self, exc: BaseException) -> float:
        """The connection failed or was lost: the next node."""
        self.last_error = f"{self.target}: {exc}"
        return self._next()

    def _next(self) -> float:
        self.failures += 1
        n = len(self.candidates)
        self.target = self.candidates[self.failures % n]
        if self.failures % n == 0:
            self.redirects = 0
            return min(0.05 * (self.failures // n), 0.5, max(self.deadline.remaining(), 0.0))
        return 0.0


def check_not_inside(src: str, dst: str) -> None:
    """A folder cannot go into itself: refused before anything is sent (InvalidPath, exit 2), by both drivers."""
    from storg.paths import InvalidPath

    if dst == src or dst.startswith(src + "/"):
        raise InvalidPath(f"cannot move or copy {src} to {dst}: the destination is {src} or inside it")
