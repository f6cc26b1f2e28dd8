"""What the operations share: object headers, ETags, times, metadata, bucket existence.

Buckets are top-level folders, and the namespace has folders only as the
prefixes of files, so an empty bucket is remembered by a marker file,
``/.storg-buckets/<bucket>`` (top-level names starting with ``.`` are no
valid bucket names, so no bucket can collide with it).  A bucket exists
when its marker does, or any file below ``/<bucket>/`` (a folder made
with storgctl is a bucket too).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from storg.s3 import checksums, conditions, listing, names, xml
from storg.s3.errors import S3Error
from storg.wire.objects import ObjectAttrs

if TYPE_CHECKING:
    from storg.gateway.handler import S3Exchange

BUCKETS = "/.storg-buckets/"
MULTIPART = names.MULTIPART_ROOT + "/"
META_PREFIX = "x-amz-meta-"
MAX_METADATA_BYTES = 2048
"""S3's limit on user metadata (names and values, without the prefix)."""

BUCKET_CACHE_S = 5.0
"""How long a bucket seen to exist is taken to exist without asking the cluster again."""


def etag_of(info: Any) -> str:
    """The quoted ETag: the stored MD5 (or multipart ``hex-N``), else the SHA-256 (files from before)."""
    return f'"{listing.etag_of(info)}"'


def http_date(ns: int) -> str:
    return conditions.http_date(ns / 1e9)


def iso_time(ns: int) -> str:
    """S3's timestamps in XML: ``2026-12-03T17:52:11.000Z``."""
    return xml.iso8601(ns / 1e9)


def object_path(ex: S3Exchange) -> str:
    """The storg path of the exchange's object; S3Error InvalidArgument/InvalidBucketName naming the rule."""
    return names.object_path(ex.bucket, ex.key)


def request_attrs(ex: S3Exchange, *, etag: str = "", checksum: tuple[str, str] | None = None,
                  extra: tuple[tuple[str, str], ...] = ()) -> ObjectAttrs:
    """An object's attributes from the request's Content-Type and x-amz-meta-* headers."""
    metadata = tuple(sorted((name[len(META_PREFIX):], value) for name, value in ex.headers
                            if name.startswith(META_PREFIX)))
    if sum(len(k) + len(v) for k, v in metadata) > MAX_METADATA_BYTES:
        raise S3Error("MetadataTooLarge", f"user metadata is over {MAX_METADATA_BYTES} bytes", 400)
    return ObjectAttrs(etag=etag, content_type=ex.header("content-type"), metadata=metadata,
                       checksums=(checksum,) if checksum else (), extra=extra)


def object_headers(info: Any, ex: S3Exchange, *, whole: bool = True) -> list[tuple[str, str]]:
    """The headers of a GET or HEAD answer: ETag, Last-Modified, type, metadata, checksums."""
    attrs = info.attrs
    headers = [("ETag", etag_of(info)), ("Last-Modified", http_date(info.modified_ns)),
               ("Accept-Ranges", "bytes"),
               ("Content-Type", attrs.content_type or "binary/octet-stream")]
    headers.extend((META_PREFIX + name, value) for name, value in attrs.metadata)
    if attrs.parts:
        headers.append(("x-amz-mp-parts-count", str(len(attrs.parts))))
    if whole and ex.header("x-amz-checksum-mode").upper() == "ENABLED":
        for algo, value in attrs.checksums:
            headers.append((checksums.header_name(algo), value))
            headers.append(("x-amz-checksum-type", "COMPOSITE" if "-" in value else "FULL_OBJECT"))
    return headers


async def bucket_exists(ex: S3Exchange, bucket: str) -> bool:
    """Whether ``bucket`` exists (its marker, or a file below it); sets ``ex.index``."""
    cache = ex.gateway.bucket_cache
    seen = cache.get(bucket)
    now = time.monotonic()
    if seen is not None and now - seen < BUCKET_CACHE_S:
        return True
    from storg.client.errors import NotFoundError
    try:
        _, index = await ex.client.stat_at(BUCKETS + bucket)
        ex.index = index
        cache[bucket] = now
        return True
    except NotFoundError:
        pass
    files, index, _ = await ex.client.ls_page(f"/{bucket}/", limit=1)
    ex.index = index
    if files:
        cache[bucket] = now
        return True
    return False


async def require_bucket(ex: S3Exchange, bucket: str | None = None) -> None:
    bucket = ex.bucket if bucket is None else bucket
    names.check_bucket(bucket)
    if not await bucket_exists(ex, bucket):
        raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404, f"/{bucket}")
