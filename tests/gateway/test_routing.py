"""Path-style S3 requests map to the operation S3's REST reference gives them."""

from __future__ import annotations

import pytest

from storg.gateway.routing import RouteError, route


@pytest.mark.parametrize(("method", "path", "query", "copy", "operation"), [
    ("GET", b"/", b"", False, "ListBuckets"),
    ("PUT", b"/b", b"", False, "CreateBucket"),
    ("PUT", b"/b/", b"", False, "CreateBucket"),
    ("HEAD", b"/b", b"", False, "HeadBucket"),
    ("DELETE", b"/b", b"", False, "DeleteBucket"),
    ("GET", b"/b", b"location", False, "GetBucketLocation"),
    ("GET", b"/b", b"uploads", False, "ListMultipartUploads"),
    ("GET", b"/b", b"list-type=2&prefix=a%2F", False, "ListObjectsV2"),
    ("GET", b"/b", b"marker=x", False, "ListObjects"),
    ("POST", b"/b", b"delete", False, "DeleteObjects"),
    ("PUT", b"/b/k", b"", False, "PutObject"),
    ("PUT", b"/b/k", b"", True, "CopyObject"),
    ("PUT", b"/b/k", b"partNumber=1&uploadId=u", False, "UploadPart"),
    ("PUT", b"/b/k", b"partNumber=1&uploadId=u", True, "UploadPartCopy"),
    ("GET", b"/b/k", b"", False, "GetObject"),
    ("GET", b"/b/k", b"uploadId=u", False, "ListParts"),
    ("HEAD", b"/b/k", b"", False, "HeadObject"),
    ("DELETE", b"/b/k", b"", False, "DeleteObject"),
    ("DELETE", b"/b/k", b"uploadId=u", False, "AbortMultipartUpload"),
    ("POST", b"/b/k", b"uploads", False, "CreateMultipartUpload"),
    ("POST", b"/b/k", b"uploadId=u", False, "CompleteMultipartUpload"),
])
def test_operations(method, path, query, copy, operation):
    assert route(method, path, query, copy_source=copy).operation == operation


def test_keys_are_percent_decoded_utf8_and_keep_their_slashes():
    found = route("GET", b"/photos/2026/caf%C3%A9%20au%20lait/", b"")
    assert (found.bucket, found.key) == ("photos", "2026/café au lait/")
    assert route("GET", b"/b", b"list-type=2&prefix=a%2Fb&delimiter=%2F").query == {
        "list-type": "2", "prefix": "a/b", "delimiter": "/"}


@pytest.mark.parametrize(("method", "path", "query", "code", "status"), [
    ("GET", b"/b/k", b"acl", "NotImplemented", 501),
    ("PUT", b"/b", b"versioning", "NotImplemented", 501),
    ("POST", b"/", b"", "MethodNotAllowed", 405),
    ("POST", b"/b/k", b"", "MethodNotAllowed", 405),
    ("PUT", b"/b/k", b"partNumber=1", "InvalidRequest", 400),
    ("GET", b"/b/%FF", b"", "InvalidURI", 400),
])
def test_what_has_no_operation_is_an_s3_error(method, path, query, code, status):
    with pytest.raises(RouteError) as caught:
        route(method, path, query)
    assert (caught.value.code, caught.value.status) == (code, status)
