"""Path-style S3 requests to operations: ``METHOD /bucket/key?query`` -> :class:`Route`.

Pure (no Twisted): the method, the raw path and query, and whether the
request names a copy source decide the operation, as S3's own REST API
reference lays them out.  Anything S3 has but this gateway does not
(versioning, ACLs, tagging, ...) is ``NotImplemented``; a method S3 does
not have on that resource is ``MethodNotAllowed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from storg.s3 import uri

UNSUPPORTED_SUBRESOURCES = frozenset({
    "acl", "tagging", "versioning", "versions", "policy", "cors", "lifecycle", "website", "logging",
    "notification", "replication", "encryption", "object-lock", "retention", "legal-hold", "torrent",
    "restore", "select", "analytics", "inventory", "metrics", "accelerate", "requestPayment",
    "ownershipControls", "publicAccessBlock", "intelligent-tiering", "attributes",
})
"""Query names that select an S3 feature the gateway does not have (answered NotImplemented)."""


class RouteError(Exception):
    """No operation: ``code`` is the S3 error code, ``status`` its HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Route:
    operation: str
    """S3's name for it: PutObject, ListObjectsV2, CompleteMultipartUpload, ..."""
    bucket: str
    key: str
    query: dict[str, str]


def decode_component(raw: bytes) -> str:
    """Percent-decoding to UTF-8; RouteError for bytes that are not UTF-8."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise RouteError("InvalidURI", "the path is not UTF-8 once percent-decoded", 400) from None


def parse_query(raw: bytes) -> dict[str, str]:
    """The query string's names and values (the first of a repeated name), decoded."""
    pairs = uri.parse_query(raw.decode("latin-1"))  # S3Error InvalidArgument if not UTF-8
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)
    return query


def route(method: str, raw_path: bytes, raw_query: bytes, *, copy_source: bool = False) -> Route:
    """The operation of a path-style request; raises :class:`RouteError`."""
    if not raw_path.startswith(b"/"):
        raise RouteError("InvalidURI", "the path must start with /", 400)
    bucket_raw, _, key_raw = raw_path[1:].partition(b"/")
    bucket = decode_component(bucket_raw)
    key = decode_component(key_raw)
    query = parse_query(raw_query)
    unsupported = sorted(UNSUPPORTED_SUBRESOURCES & set(query))
    if unsupported:
        raise RouteError("NotImplemented", f"?{unsupported[0]} is not supported by this gateway", 501)
    if not bucket:
        if method in ("GET", "HEAD"):
            return Route("ListBuckets", "", "", query)
        raise RouteError("MethodNotAllowed", f"{method} is not allowed on /", 405)
    if not key:
        return Route(_bucket_operation(method, query), bucket, "", query)
    return Route(_object_operation(method, query, copy_source), bucket, key, query)


def _bucket_operation(method: str, query: dict[str, str]) -> str:
    if method == "GET":
        if "location" in query:
            return "GetBucketLocation"
        if "uploads" in query:
            return "ListMultipartUploads"
        if query.get("list-type") == "2":
            return "ListObjectsV2"
        return "ListObjects"
    if method == "HEAD":
        return "HeadBucket"
    if method == "PUT":
        return "CreateBucket"
    if method == "DELETE":
        return "DeleteBucket"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    raise RouteError("MethodNotAllowed", f"{method} is not allowed on a bucket", 405)


def _object_operation(method: str, query: dict[str, str], copy_source: bool) -> str:
    upload = "uploadId" in query
    if method == "PUT":
        if upload or "partNumber" in query:
            if not (upload and "partNumber" in query):
                raise RouteError("InvalidRequest", "an upload part needs both partNumber and uploadId", 400)
            return "UploadPartCopy" if copy_source else "UploadPart"
        return "CopyObject" if copy_source else "PutObject"
    if method == "GET":
        return "ListParts" if upload else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if upload else "DeleteObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if upload:
            return "CompleteMultipartUpload"
    raise RouteError("MethodNotAllowed", f"{method} is not allowed on an object", 405)
