"""One S3 exchange: route, authenticate, run the operation, answer (or answer the error).

An :class:`S3Exchange` is made when a request's headers are in
(:class:`~storg.gateway.request.StreamingRequest` calls the gateway's
:meth:`Gateway.exchange`).  It routes the request, checks its signature
and the key's role at once (so an upload that will be refused never
reaches the cluster), and starts the operation, which may begin streaming
the body to the cluster before the last byte has arrived.  The answer is
written only once the whole body has been read, whatever happened, so the
connection stays usable for the client's next request.

Every answer carries ``x-amz-request-id``; every answer of an operation
that read or wrote the namespace carries ``x-storg-index``: the log index
its read was linearized at, or the index of the entry it committed.
Errors are S3's XML (``<Code>``, ``<Message>``, ``<Resource>``,
``<RequestId>``), and every storg client error has its S3 code here.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.client import errors as client_errors
from storg.gateway import payload
from storg.gateway.body import BodyPump, Observer
from storg.gateway.request import StreamingRequest
from storg.gateway.routing import Route, RouteError, route
from storg.paths import InvalidPath
from storg.s3 import sigv4
from storg.s3.errors import S3Error, render_error
from storg.server.permissions import GRANTS, READ, WRITE

log = Logger(namespace="storg.gateway")

MAX_XML_BODY = 4 * 1024 * 1024
"""The largest XML body read into memory (a CompleteMultipartUpload of 10,000 parts is ~1 MiB)."""


@dataclass
class Response:
    """What an operation answers (unless it wrote the answer itself: ``streamed``)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    index: int | None = None
    """x-storg-index: the commit index the operation read at or wrote."""
    content_type: str = "application/xml"
    streamed: bool = False


Operation = Callable[["S3Exchange"], Awaitable[Response]]


class Gateway:
    """What every exchange shares: the cluster client, the key table, the operations.

    ``lookup_key(key_id) -> (secret, role) | None`` reads the node's applied
    state (:meth:`storg.fsm.machine.FileStoreStateMachine.s3_secret`).
    """

    def __init__(self, client: Any, lookup_key: Callable[[str], tuple[str, str] | None],
                 operations: dict[str, tuple[str, Operation]], *,
                 reactor: Any, region: str = "us-east-1", clock: Callable[[], float] = time.time,
                 catch_up: Callable[[], Awaitable[object]] | None = None) -> None:
        """``catch_up()``: wait until this node has applied everything committed (ReadIndex), so
        that a key created through another node is known here."""
        self.client = client
        self.catch_up = catch_up
        self.lookup_key = lookup_key
        self.reactor = reactor
        self.region = region
        self.clock = clock
        self.bucket_cache: dict[str, float] = {}
        """Buckets seen to exist, with when (storg.gateway.common.bucket_exists)."""
        self.operations = operations
        """S3 operation name -> (the permission it needs, what runs it)."""

    def exchange(self, request: StreamingRequest) -> S3Exchange:
        return S3Exchange(self, request)


def _headers_of(request: StreamingRequest) -> list[tuple[str, str]]:
    return [(name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders() for value in values]


class _LateSink:
    """The body's sink before the operation has one: holds one piece (the pump pauses meanwhile)."""

    def __init__(self) -> None:
        self.target: Callable[[bytes], defer.Deferred[Any] | None] | None = None
        self.held: tuple[bytes, defer.Deferred[None]] | None = None

    def write(self, data: bytes) -> defer.Deferred[Any] | None:
        if self.target is not None:
            return self.target(data)
        d: defer.Deferred[None] = defer.Deferred()
        self.held = (data, d)
        return d

    def set(self, target: Callable[[bytes], defer.Deferred[Any] | None]) -> None:
        self.target = target
        if self.held is not None:
            data, d = self.held
            self.held = None
            result = target(data)
            if isinstance(result, defer.Deferred):
                result.chainDeferred(d)
            else:
                d.callback(None)


class _Collector:
    """A small body (XML) gathered in memory, refused past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise S3Error("MaxMessageLengthExceeded", f"the request body is over {self.limit} bytes", 400)
        self.parts.append(data)


class S3Exchange:
    """One request and its answer (see the module's docstring)."""

    def __init__(self, gateway: Gateway, request: StreamingRequest) -> None:
        self.gateway = gateway
        self.request = request
        self.client = gateway.client
        self.request_id = secrets.token_hex(8).upper()
        self.method = request.method.decode("latin-1").upper()
        self.raw_path: bytes = request.path
        self.raw_query: bytes = request.query
        self.headers = _headers_of(request)
        self.header_map: dict[str, str] = {}
        for name, value in self.headers:
            self.header_map[name] = value if name not in self.header_map else f"{self.header_map[name]},{value}"
        self.resource = self.raw_path.decode("latin-1")
        self.route: Route | None = None
        self.auth: Any = None
        self.role = ""
        self.index: int | None = None
        self.checksum: tuple[str, str] | None = None
        """(ALGO, base64) of the body, once checked against what the client said (storg.gateway.payload)."""
        self.body_in: defer.Deferred[None] = defer.Deferred()
        self.lost = False
        self._sink = _LateSink()
        self._checks: list[Callable[[dict[str, str]], None]] = []
        self.pump = BodyPump(request, self._sink.write)
        request.notifyFinish().addErrback(self._connection_lost)
        self.prepared = False
        self._early: list[bytes] = []
        self._ended_early = False
        defer.Deferred.fromCoroutine(self._start())

    # -- what operations use ------------------------------------------------------------

    def header(self, name: str, default: str = "") -> str:
        return self.header_map.get(name, default)

    @property
    def bucket(self) -> str:
        assert self.route is not None
        return self.route.bucket

    @property
    def key(self) -> str:
        assert self.route is not None
        return self.route.key

    @property
    def query(self) -> dict[str, str]:
        assert self.route is not None
        return self.route.query

    def observe(self, observer: Observer) -> None:
        """Show ``observer`` every decoded body piece (a hash of the payload)."""
        self.pump.observers = (*self.pump.observers, observer)

    def check_at_end(self, check: Callable[[dict[str, str]], None]) -> None:
        """Run ``check(trailers)`` once the body is complete, before the operation sees it."""
        self._checks.append(check)

    def stream_body(self, write: Callable[[bytes], defer.Deferred[Any] | None]) -> None:
        """Send the decoded body to ``write`` (flow control: its Deferred)."""
        self._sink.set(write)

    async def body(self) -> dict[str, str]:
        """Wait for the whole body to have gone to its sink and been checked; returns the trailers."""
        await self.body_in
        trailers = await self.pump.wait()
        for check in self._checks:
            check(trailers)
        return trailers

    async def small_body(self, limit: int = MAX_XML_BODY) -> bytes:
        """The whole body, in memory (XML requests), at most ``limit`` bytes."""
        collector = _Collector(limit)
        self.stream_body(collector.write)
        await self.body()
        return b"".join(collector.parts)

    @property
    def decoded_length(self) -> int | None:
        """The payload's size: x-amz-decoded-content-length for aws-chunked bodies, else Content-Length."""
        declared = self.header("x-amz-decoded-content-length")
        if declared:
            if not declared.isdigit():
                raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a number", 400)
            return int(declared)
        return self.request.body_length

    # -- the exchange ---------------------------------------------------------------------

    def _prepare(self) -> None:
        """Route and authenticate (synchronous: the key table is in this process)."""
        try:
            self.route = route(self.method, self.raw_path, self.raw_query,
                               copy_source=bool(self.header("x-amz-copy-source")))
        except RouteError as exc:
            raise S3Error(exc.code, exc.message, exc.status) from None
        found: dict[str, str] = {}

        def lookup(key_id: str) -> str | None:
            entry = self.gateway.lookup_key(key_id)
            if entry is None:
                return None
            found[key_id] = entry[1]
            return entry[0]

        self.auth = sigv4.authenticate(self.method, self.raw_path.decode("latin-1"),
                                       self.raw_query.decode("latin-1"), self.headers, lookup, self.gateway.clock())
        self.role = found.get(self.auth.access_key, "")
        need, _ = self.gateway.operations[self.route.operation]
        if need not in GRANTS.get(self.role, frozenset()):
            raise S3Error("AccessDenied", f"key {self.auth.access_key} ({self.role}) may not {need}", 403)
        payload.install(self)

    async def _start(self) -> None:
        try:
            try:
                self._prepare()
            except S3Error as exc:
                # A key created a moment ago on another node may not be applied here yet: catch
                # up with the leader's commit index (a ReadIndex round) and look once more.
                if exc.code != "InvalidAccessKeyId" or self.gateway.catch_up is None:
                    raise
                await self.gateway.catch_up()
                self._prepare()
        except Exception:
            failure = Failure()
            self.pump.fail(failure)
            self._prepared()
            await self._answer_failure(failure)
            return
        self._prepared()
        await self._run()

    def _prepared(self) -> None:
        """The body's framing is known now: pass on what arrived meanwhile."""
        self.prepared = True
        early, self._early = self._early, []
        self.request.resume()
        for data in early:
            self.pump.feed(data)
        if self._ended_early:
            self.body_end()

    async def _run(self) -> None:
        assert self.route is not None
        _, operation = self.gateway.operations[self.route.operation]
        try:
            response = await operation(self)
        except Exception:
            await self._answer_failure(Failure())
            return
        await self.body_in
        if not response.streamed:
            self._write(response)

    def body_chunk(self, data: bytes) -> None:
        if not self.prepared:
            self._early.append(data)  # one socket read at most: the connection is paused
            self.request.pause()
            return
        self.pump.feed(data)

    def body_end(self) -> None:
        if not self.prepared:
            self._ended_early = True
            return
        self.pump.end()
        if not self.body_in.called:
            self.body_in.callback(None)

    def _connection_lost(self, failure: Failure) -> None:
        self.lost = True
        self.pump.fail(failure)
        if not self.body_in.called:
            self.body_in.callback(None)  # no more is coming: let the operation end (and answer no one)

    async def _answer_failure(self, failure: Failure) -> None:
        error = s3_error_of(failure, self.resource)
        if error.code == "InternalError":
            log.failure("S3 {method} {path}: InternalError", failure, method=self.method, path=self.resource)
        elif error.status >= 500:
            log.warn("S3 {method} {path}: {code} ({why})", method=self.method, path=self.resource,
                     code=error.code, why=failure.getErrorMessage())
        self.pump.fail(failure)
        if self.index is None and isinstance(failure.value, (client_errors.NotFoundError,
                                                             client_errors.ConflictError)):
            # The namespace was read (and said no): say at which index, as every read does.
            # The refusal carries none, so a ReadIndex round gives one at least as late.
            try:
                self.index = await self.client.probe_read(timeout=5.0)
            except Exception:  # noqa: BLE001 -- the answer stands without its index
                pass
        await self.body_in
        if self.request.startedWriting:
            # The answer's head is out already (a GET cut short): all that is left is to cut.
            transport = self.request._transport()
            if not self.lost and transport is not None:
                transport.abortConnection()
            return
        body = render_error(error, error.resource or self.resource, self.request_id)
        self._write(Response(error.status, headers=list(error.headers), body=b"" if self.method == "HEAD" else body),
                    length=len(body))

    def start_answer(self, status: int, headers: list[tuple[str, str]], index: int | None) -> None:
        """Write the answer's status and headers (operations that stream their body)."""
        request = self.request
        request.setResponseCode(status)
        request.setHeader(b"Server", b"storg")
        request.setHeader(b"Date", email.utils.formatdate(usegmt=True).encode())
        request.setHeader(b"x-amz-request-id", self.request_id.encode())
        if index is not None:
            request.setHeader(b"x-storg-index", str(index).encode())
        raw: Any = request.responseHeaders
        for name, value in headers:
            if name.startswith("x-amz-meta-"):
                # As S3 sends them: lower-case.  twisted.web would send X-Amz-Meta-Colour, and
                # botocore keeps the case of what follows the prefix ({"Colour": ...}).
                raw._rawHeaders.setdefault(name.encode("latin-1"), []).append(value.encode("utf-8"))
            else:
                request.responseHeaders.addRawHeader(name.encode("latin-1"), value.encode("utf-8"))

    def _write(self, response: Response, length: int | None = None) -> None:
        if self.lost or self.request.finished:
            return
        headers = list(response.headers)
        if response.body or response.status == 200 or length is not None:
            if not any(name.lower() == "content-type" for name, _ in headers) and response.body:
                headers.append(("Content-Type", response.content_type))
            if not any(name.lower() == "content-length" for name, _ in headers):
                headers.append(("Content-Length", str(len(response.body) if length is None else length)))
        self.start_answer(response.status, headers, response.index if response.index is not None else self.index)
        if response.body:
            self.request.write(response.body)
        self.request.finish()


def s3_error_of(failure: Failure, resource: str) -> S3Error:
    """The S3 error an operation's failure is answered with."""
    exc = failure.value
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, client_errors.NotFoundError):
        return S3Error("NoSuchKey", "The specified key does not exist.", 404, resource)
    if isinstance(exc, client_errors.ConflictError):
        return S3Error("PreconditionFailed", "At least one of the preconditions you specified did not hold.",
                       412, resource)
    if isinstance(exc, (client_errors.BadRequest, InvalidPath)):
        return S3Error("InvalidArgument", str(exc), 400, resource)
    if isinstance(exc, client_errors.PermissionDenied):
        return S3Error("AccessDenied", str(exc), 403, resource)
    if isinstance(exc, client_errors.DiskFull):
        return S3Error("ServiceUnavailable", f"the cluster refuses new data: {exc}", 503, resource)
    if isinstance(exc, client_errors.ClusterUnavailable):
        return S3Error("ServiceUnavailable", f"the cluster is not available: {exc}", 503, resource)
    if isinstance(exc, client_errors.LimitExceeded):
        return S3Error("SlowDown", str(exc), 503, resource)
    if isinstance(exc, client_errors.IntegrityError):
        return S3Error("InternalError", f"integrity check failed: {exc}", 500, resource)
    return S3Error("InternalError", "We encountered an internal error. Please try again.", 500, resource)


READS = READ
WRITES = WRITE
