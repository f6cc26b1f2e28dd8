"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects, CopyObject.

An object is a file: PutObject streams the body into a cluster upload
(:meth:`~storg.client.api.StorgClient.put_stream`) as it arrives, and
commits it only once every check of the body has passed (signature,
Content-MD5, checksum), so a refused or broken upload leaves nothing.
GetObject streams the file back at the client's pace.  CopyObject is the
namespace's ``cp``: the copy shares the source's chunks, no byte moves.
Conditional PUTs (``If-None-Match: *``, ``If-Match``) are the client
library's ``if_absent`` and ``if_match_etag``, decided when the entry
applies, so of two racing writers exactly one wins.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from storg.client.errors import NotFoundError
from storg.gateway.body import Coalescer
from storg.gateway.common import (
    etag_of,
    http_date,
    iso_time,
    object_headers,
    object_path,
    request_attrs,
    require_bucket,
)
from storg.gateway.handler import READ, WRITE, Response, S3Exchange
from storg.s3 import checksums, conditions, names, ranges, xml
from storg.s3.errors import S3Error
from storg.wire.attrs import ObjectAttrs
from storg.wire.files import FileInfo
from storg.wire.record import replace as replace_record

MAX_PUT = 5 * 1024 ** 3
"""S3's largest single PUT (5 GiB); larger objects are multipart."""

SMALL_BODY = 1024 * 1024
"""A body up to this size is read whole before it is stored, then put in one round trip; a
larger one streams into the cluster as it arrives.  Either way a checksum that comes in the
trailer goes into the put's own entry (PutStream.finish(attrs=...))."""

DELETE_CONCURRENCY = 16
"""DeleteObjects removes this many keys at once."""


@implementer(IPushProducer)
class WriteGate:
    """A GET's flow control: ``write`` returns a Deferred while the client's socket is full."""

    def __init__(self, ex: S3Exchange) -> None:
        self.ex = ex
        self.paused = False
        self.waiting: defer.Deferred[None] | None = None
        ex.request.registerProducer(self, True)

    def write(self, data: bytes) -> defer.Deferred[None] | None:
        if self.ex.lost:
            raise ConnectionLost("the client went away")
        self.ex.request.write(data)
        if self.paused:
            self.waiting = defer.Deferred()
            return self.waiting
        return None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.ex.lost = True
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(ConnectionLost("the client went away"))

    def close(self) -> None:
        if getattr(self.ex.request, "channel", None) is not None:
            self.ex.request.unregisterProducer()


def put_conditions(ex: S3Exchange) -> tuple[bool, str]:
    """(if_absent, if_match_etag) of a PUT or Complete, as S3 allows them (storg.s3.conditions)."""
    return conditions.write_conditions(ex.header("if-match"), ex.header("if-none-match"))


def header_checksum(ex: S3Exchange) -> tuple[str, str] | None:
    """The checksum the request names in a header (known before the body: stored with the put)."""
    for algo in checksums.ALGORITHMS:
        value = ex.header(checksums.header_name(algo))
        if value:
            return algo, value
    return None


def checksum_headers(attrs: Any) -> list[tuple[str, str]]:
    return [(checksums.header_name(algo), value) for algo, value in attrs.checksums]


async def put_object(ex: S3Exchange) -> Response:
    path = object_path(ex)
    size = ex.decoded_length
    if size is not None and size > MAX_PUT:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size (5 GiB); "
                      "use a multipart upload", 400)
    if_absent, if_match = put_conditions(ex)
    await require_bucket(ex)
    if size is not None and size <= SMALL_BODY:
        # Small: read and check the whole body first, then one ordinary put (one round trip for
        # the smallest, retried as any put) whose attributes already hold the trailer's checksum.
        data = await ex.small_body(SMALL_BODY)
        info = await ex.client.put(io.BytesIO(data), path, if_absent=if_absent, if_match_etag=if_match,
                                   attrs=request_attrs(ex, checksum=ex.checksum))
        return Response(headers=[("ETag", etag_of(info)), *checksum_headers(info.attrs)], index=info.version)
    info = await put_streamed(ex, path, size, lambda checksum: request_attrs(ex, checksum=checksum),
                              if_absent=if_absent, if_match_etag=if_match)
    return Response(headers=[("ETag", etag_of(info)), *checksum_headers(info.attrs)], index=info.version)


async def put_streamed(ex: S3Exchange, path: str, size: int | None,
                       attrs_of: Callable[[tuple[str, str] | None], ObjectAttrs], *,
                       if_absent: bool = False, if_match_etag: str = "") -> FileInfo:
    """The request's body streamed into the file ``path``, committed once every check passed.

    ``attrs_of(checksum)`` makes the object's attributes: at the start
    with the checksum a header named, at the end with the one the body
    was checked against, which may have come only now, in the aws-chunked
    trailer.  The end's go into the put's own entry (one commit, no
    second write to add the checksum).
    """
    stream = ex.client.put_stream(path, size=size, attrs=attrs_of(header_checksum(ex)), if_absent=if_absent,
                                  if_match_etag=if_match_etag)
    await stream_into(ex, stream)
    info: FileInfo = await stream.finish(attrs=attrs_of(ex.checksum))
    return info


async def stream_into(ex: S3Exchange, stream: Any) -> None:
    """The request's body into the cluster upload ``stream``, checked; aborted on any failure."""
    sink = Coalescer(stream.write)
    ex.stream_body(sink.write)
    try:
        await ex.body()
        last = sink.flush()
        if last is not None:
            await last
    except BaseException:
        stream.abort()
        raise


def _precondition(ex: S3Exchange, info: Any) -> Response | None:
    """A 304 or 412 answer when the request's conditions say so (RFC 9110's order)."""
    status = conditions.evaluate(
        if_match=ex.header("if-match"), if_none_match=ex.header("if-none-match"),
        if_modified_since=ex.header("if-modified-since"), if_unmodified_since=ex.header("if-unmodified-since"),
        etag=etag_of(info), last_modified=info.modified_ns / 1e9)
    if status is None:
        return None
    if status == 304:
        return Response(304, headers=[("ETag", etag_of(info)), ("Last-Modified", http_date(info.modified_ns))])
    raise S3Error("PreconditionFailed", "At least one of the preconditions you specified did not hold.", 412)


def _range_of(ex: S3Exchange, size: int) -> tuple[int, int] | None:
    header = ex.header("range")
    if not header:
        return None
    return ranges.parse(header, size)


async def head_object(ex: S3Exchange) -> Response:
    path = object_path(ex)
    _part_number_unsupported(ex)
    info, index = await ex.client.stat_at(path)
    ex.index = index
    early = _precondition(ex, info)
    if early is not None:
        return early
    span = _range_of(ex, info.size)
    headers = object_headers(info, ex, whole=span is None)
    if span is None:
        return Response(200, headers=[*headers, ("Content-Length", str(info.size))], index=index)
    offset, length = span
    return Response(206, headers=[*headers, ("Content-Length", str(length)),
                                  ("Content-Range", ranges.content_range(offset, length, info.size))],
                    index=index)


def _part_number_unsupported(ex: S3Exchange) -> None:
    if "partNumber" in ex.query:
        raise S3Error("NotImplemented", "GetObject/HeadObject by partNumber is not supported", 501)


async def get_object(ex: S3Exchange) -> Response:
    path = object_path(ex)
    _part_number_unsupported(ex)
    span: tuple[int, int] | None = None
    conditional = any(ex.header(h) for h in ("if-match", "if-none-match", "if-modified-since",
                                             "if-unmodified-since"))
    if conditional or ex.header("range"):
        # The size decides the range (suffix ranges, 416), the stored ETag the conditions.
        info, index = await ex.client.stat_at(path)
        ex.index = index
        early = _precondition(ex, info)
        if early is not None:
            return early
        span = _range_of(ex, info.size)
    gate = WriteGate(ex)

    def on_start(info: Any, read_index: int) -> None:
        if span is None:
            headers = [*object_headers(info, ex), ("Content-Length", str(info.size))]
            ex.start_answer(200, headers, read_index)
        else:
            offset, length = span
            headers = [*object_headers(info, ex, whole=False), ("Content-Length", str(length)),
                       ("Content-Range", ranges.content_range(offset, length, info.size))]
            ex.start_answer(206, headers, read_index)

    await ex.body_in
    try:
        if span is None:
            await ex.client.get_stream(path, gate.write, on_start=on_start)
        else:
            await ex.client.get_stream(path, gate.write, offset=span[0], length=span[1], on_start=on_start)
    finally:
        gate.close()
    if not ex.lost:
        ex.request.finish()
    return Response(streamed=True)


async def delete_object(ex: S3Exchange) -> Response:
    path = object_path(ex)
    try:
        index = await ex.client.rm(path)
    except NotFoundError:
        index = await ex.client.probe_read()  # S3 answers 204 for a missing key too
    return Response(204, index=index)


async def delete_objects(ex: S3Exchange) -> Response:
    names.check_bucket(ex.bucket)
    if not (ex.header("content-md5") or any(ex.header(checksums.header_name(a)) for a in checksums.ALGORITHMS)
            or ex.header("x-amz-trailer")):
        raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5 "
                      "(or an x-amz-checksum-*)", 400)
    keys, quiet = xml.parse_delete(await ex.small_body())
    if len(keys) > 1000:
        raise S3Error("MalformedXML", "at most 1000 keys per DeleteObjects", 400)
    deleted: list[str] = []
    failed: list[tuple[str, str, str]] = []
    indexes: list[int] = []
    semaphore = defer.DeferredSemaphore(DELETE_CONCURRENCY)

    async def remove(key: str) -> None:
        try:
            path = names.object_path(ex.bucket, key)
        except S3Error as exc:
            failed.append((key, exc.code, exc.message))
            return
        try:
            indexes.append(await ex.client.rm(path))
        except NotFoundError:
            pass
        except Exception as exc:  # one key's failure is reported in the result, the others go on
            failed.append((key, "InternalError", str(exc)))
            return
        deleted.append(key)

    def start(key: str) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(remove(key))

    await defer.gatherResults([semaphore.run(start, key) for key in keys], consumeErrors=True)
    index = max(indexes) if indexes else await ex.client.probe_read()
    order = {key: i for i, key in enumerate(keys)}
    deleted.sort(key=order.__getitem__)
    body = xml.delete_result([] if quiet else deleted, failed)
    return Response(200, body=body, index=index)


def copy_source(ex: S3Exchange) -> tuple[str, str]:
    """The (bucket, key) of x-amz-copy-source (``[/]bucket/key``, percent-encoded; no versions)."""
    raw = ex.header("x-amz-copy-source")
    text, _, version = raw.partition("?")
    if version:
        raise S3Error("NotImplemented", "copy sources with a versionId are not supported", 501)
    bucket, _, key = unquote(text).lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be bucket/key", 400)
    return bucket, key


def check_copy_source_conditions(ex: S3Exchange, info: Any) -> None:
    """x-amz-copy-source-if-* against the source: any that fails is 412, as S3 answers a copy."""
    verdict = conditions.evaluate(
        if_match=ex.header("x-amz-copy-source-if-match"), if_none_match=ex.header("x-amz-copy-source-if-none-match"),
        if_modified_since=ex.header("x-amz-copy-source-if-modified-since"),
        if_unmodified_since=ex.header("x-amz-copy-source-if-unmodified-since"),
        etag=etag_of(info), last_modified=info.modified_ns / 1e9)
    if verdict is not None:
        raise S3Error("PreconditionFailed", "At least one of the preconditions you specified did not hold.", 412)


async def copy_object(ex: S3Exchange) -> Response:
    dst = object_path(ex)
    src_bucket, src_key = copy_source(ex)
    src = names.object_path(src_bucket, src_key)
    directive = ex.header("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "x-amz-metadata-directive must be COPY or REPLACE", 400)
    await require_bucket(ex)
    info, index = await ex.client.stat_at(src)
    ex.index = index
    check_copy_source_conditions(ex, info)
    attrs = None
    if directive == "REPLACE":
        given = request_attrs(ex)
        attrs = replace_record(info.attrs, content_type=given.content_type, metadata=given.metadata)
    elif src == dst:
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                      "to itself without changing the object's metadata, storage class, website redirect "
                      "location or encryption attributes.", 400)
    index = await ex.client.cp(src, dst, force=True, attrs=attrs)
    copied, _ = await ex.client.stat_at(dst)
    body = xml.copy_object_result(etag_of(copied), iso_time(copied.modified_ns))
    return Response(200, body=body, index=index)


OPERATIONS = {
    "PutObject": (WRITE, put_object),
    "GetObject": (READ, get_object),
    "HeadObject": (READ, head_object),
    "DeleteObject": (WRITE, delete_object),
    "DeleteObjects": (WRITE, delete_objects),
    "CopyObject": (WRITE, copy_object),
}
