"""Bucket operations and listing: ListBuckets, CreateBucket, HeadBucket, DeleteBucket,
GetBucketLocation, ListObjectsV2, ListObjects (V1).

A bucket is a top-level folder (see :mod:`storg.gateway.common` for the
marker that keeps an empty one).  Listing pages through the namespace with
:meth:`~storg.client.api.StorgClient.ls_page` as :class:`storg.s3.listing.ListPlan`
asks (a page of at most 1,000 files at a time, skipping past common
prefixes), so no listing holds more than a page nor keeps the reactor busy
for more than one page's work.
"""

from __future__ import annotations

import io
from typing import Any

from storg.client.errors import ConflictError, NotFoundError
from storg.gateway.common import BUCKETS, bucket_exists, iso_time, require_bucket
from storg.gateway.handler import READ, WRITE, Response, S3Exchange
from storg.s3 import listing, names, xml
from storg.s3.errors import S3Error

LAST = "\U0010ffff"
"""Sorts after every character: ``start_after=PREFIX + LAST * 4`` skips every path below PREFIX."""

PAGE = 1000


async def _pages(ex: S3Exchange, prefix: str, start_after: str = "") -> Any:
    """Every file below ``prefix``, page by page (an async generator of FileInfo)."""
    more = True
    while more:
        files, index, more = await ex.client.ls_page(prefix, start_after=start_after, limit=PAGE)
        if ex.index is None:
            ex.index = index
        for info in files:
            yield info
        if not files:
            return
        start_after = files[-1].path


async def list_buckets(ex: S3Exchange) -> Response:
    found: dict[str, int] = {}
    async for info in _pages(ex, BUCKETS):
        name = info.path[len(BUCKETS):]
        if _is_bucket_name(name):
            found[name] = info.modified_ns
    # Top-level folders holding files are buckets too: one file of each is enough.
    start_after = ""
    more = True
    while more:
        files, index, more = await ex.client.ls_page("/", start_after=start_after, limit=1)
        if ex.index is None:
            ex.index = index
        if not files:
            break
        top, sep, _ = files[0].path[1:].partition("/")
        if sep and _is_bucket_name(top):
            found.setdefault(top, files[0].modified_ns)
            found[top] = min(found[top], files[0].modified_ns)
        start_after = f"/{top}/{LAST * 4}" if sep else files[0].path
    buckets = [(name, iso_time(created)) for name, created in sorted(found.items())]
    return Response(body=xml.list_buckets(buckets))


def _is_bucket_name(name: str) -> bool:
    try:
        names.check_bucket(name)
    except S3Error:
        return False
    return True


async def create_bucket(ex: S3Exchange) -> Response:
    names.check_bucket(ex.bucket)
    body = await ex.small_body()
    if body.strip():
        xml.parse_create_bucket(body)  # a LocationConstraint: any is accepted (one region)
    if await bucket_exists(ex, ex.bucket):
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                      "succeeded and you already own it.", 409, f"/{ex.bucket}")
    try:
        info = await ex.client.put(io.BytesIO(b""), BUCKETS + ex.bucket, if_absent=True)
    except ConflictError:
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                      "succeeded and you already own it.", 409, f"/{ex.bucket}") from None
    return Response(headers=[("Location", f"/{ex.bucket}")], index=info.version)


async def head_bucket(ex: S3Exchange) -> Response:
    await require_bucket(ex)
    return Response(headers=[("x-amz-bucket-region", ex.gateway.region)])


async def delete_bucket(ex: S3Exchange) -> Response:
    names.check_bucket(ex.bucket)
    files, index, _ = await ex.client.ls_page(f"/{ex.bucket}/", limit=1)
    ex.index = index
    if files:
        raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409, f"/{ex.bucket}")
    try:
        index = await ex.client.rm(BUCKETS + ex.bucket)
    except NotFoundError:
        raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, f"/{ex.bucket}") from None
    ex.gateway.bucket_cache.pop(ex.bucket, None)
    return Response(204, index=index)


async def get_bucket_location(ex: S3Exchange) -> Response:
    await require_bucket(ex)
    return Response(body=xml.location_constraint("" if ex.gateway.region == "us-east-1" else ex.gateway.region))


async def _list(ex: S3Exchange, version: int) -> Response:
    await require_bucket(ex)
    plan = listing.ListPlan(ex.bucket, ex.query, version=version)
    while (fetch := plan.next_fetch()) is not None:
        start_after, limit = fetch
        files, index, more = await ex.client.ls_page(plan.ls_prefix, start_after=start_after, limit=limit)
        if ex.index is None:
            ex.index = index
        plan.take(files, more)
    return Response(body=xml.list_objects(plan.result()))


async def list_objects_v2(ex: S3Exchange) -> Response:
    return await _list(ex, 2)


async def list_objects_v1(ex: S3Exchange) -> Response:
    return await _list(ex, 1)


OPERATIONS = {
    "ListBuckets": (READ, list_buckets),
    "CreateBucket": (WRITE, create_bucket),
    "HeadBucket": (READ, head_bucket),
    "DeleteBucket": (WRITE, delete_bucket),
    "GetBucketLocation": (READ, get_bucket_location),
    "ListObjectsV2": (READ, list_objects_v2),
    "ListObjects": (READ, list_objects_v1),
}
