"""Bucket names, and the mapping between S3 keys and storg paths.

A bucket is a top-level folder and object ``k`` of bucket ``b`` is the file
``/b/k``, so a file put with storgctl is an object and the other way round.
The mapping is the identity on text, so it cannot be lossy; the price is
that keys which are not valid storg paths are refused (``InvalidArgument``
naming the rule) rather than mapped: an empty segment (a leading ``/``,
``//``, a trailing ``/``), a ``.`` or ``..`` segment, a NUL, or a path over
:data:`storg.paths.MAX_PATH_BYTES`.  S3's own key limit (1,024 bytes) is
``KeyTooLongError`` first.

Multipart uploads in progress live under :data:`MULTIPART_ROOT`, a
top-level folder that is not a valid bucket name (it starts with ``.``), so
ListBuckets never shows it and no client can name it.
"""

from __future__ import annotations

import re
import secrets

from storg import paths
from storg.s3.errors import S3Error, invalid_argument

MAX_KEY_BYTES = 1024
"""S3's limit on a key, in bytes of UTF-8."""
MULTIPART_ROOT = "/.storg-multipart"
MAX_PART_NUMBER = 10000

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def bucket_problem(name: str) -> str:
    """Why ``name`` is not a valid bucket name (S3's general-purpose rules), or ``""``."""
    if not _BUCKET.fullmatch(name):
        return ("a bucket name is 3 to 63 characters of lower-case letters, digits, '.' and '-', "
                "starting and ending with a letter or a digit")
    if ".." in name or ".-" in name or "-." in name:
        return "a bucket name has no two adjacent periods and no period next to a hyphen"
    if _IPV4.fullmatch(name):
        return "a bucket name is not an IP address"
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")) or name.endswith(("-s3alias", "--ol-s3", "--x-s3")):
        return "a bucket name does not use a prefix or suffix S3 reserves"
    return ""


def is_bucket(name: str) -> bool:
    """Whether a top-level folder can be shown as a bucket (ListBuckets skips the others)."""
    return not bucket_problem(name)


def check_bucket(name: str) -> str:
    """``name`` if it is a valid bucket name, else ``InvalidBucketName``."""
    problem = bucket_problem(name)
    if problem:
        raise S3Error("InvalidBucketName", f"The specified bucket is not valid: {problem}.", 400,
                      details=(("BucketName", name),))
    return name


def key_problem(key: str) -> str:
    """Why storg cannot store ``key`` as a path, or ``""`` (S3's length limit not included)."""
    if not key:
        return "the key is empty"
    if "\x00" in key:
        return "the key contains a NUL character"
    if key.startswith("/"):
        return "the key starts with '/' (storg paths have no empty segments)"
    if key.endswith("/"):
        return "the key ends with '/' (storg stores files, not folder markers)"
    for segment in key.split("/"):
        if not segment:
            return "the key contains '//' (storg paths have no empty segments)"
        if segment in (".", ".."):
            return f"the key has a {segment!r} segment (storg paths cannot have one)"
    return ""


def object_path(bucket: str, key: str) -> str:
    """The storg path of ``key`` in ``bucket``: ``/bucket/key``; S3Error when storg cannot store it."""
    check_bucket(bucket)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid_argument("the key is not valid Unicode", "key") from None
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", f"Your key is too long: {size} bytes, S3 allows {MAX_KEY_BYTES}.", 400)
    problem = key_problem(key)
    if problem:
        raise invalid_argument(f"storg cannot store this key: {problem}", "key", key)
    path = f"/{bucket}/{key}"
    try:
        return paths.normalize_path(path)
    except paths.InvalidPath as err:
        raise invalid_argument(f"storg cannot store this key: {err}", "key", key) from None


def bucket_path(bucket: str) -> str:
    """The folder of a bucket: ``/bucket``."""
    return "/" + check_bucket(bucket)


def split_path(path: str) -> tuple[str, str]:
    """``/bucket/key`` -> ``(bucket, key)``; ValueError for a path with no key (a top-level file)."""
    bucket, slash, key = path.removeprefix("/").partition("/")
    if not slash or not bucket or not key:
        raise ValueError(f"{path!r} is not inside a bucket")
    return bucket, key


# -- multipart uploads -------------------------------------------------------------------------------------------------

def new_upload_id() -> str:
    """A fresh upload id: 128 random bits in hex (a valid path segment, unguessable)."""
    return secrets.token_hex(16)


def check_upload_id(upload_id: str) -> str:
    """``upload_id`` if it could be one of ours, else ``NoSuchUpload`` (so it is safe inside a path)."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the "
                      "upload may have been aborted or completed.", 404, details=(("UploadId", upload_id),))
    return upload_id


def upload_folder(upload_id: str) -> str:
    return f"{MULTIPART_ROOT}/{check_upload_id(upload_id)}"


def upload_info_path(upload_id: str) -> str:
    """The empty file whose attributes describe the upload (target, content type, metadata...)."""
    return f"{upload_folder(upload_id)}/info"


def part_number(text: str) -> int:
    """A ``partNumber`` query value, 1..10000, else InvalidArgument."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PART_NUMBER:
        raise invalid_argument(f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
                               "partNumber", text)
    return int(text)


def part_path(upload_id: str, number: int) -> str:
    """One part's file: five digits, so that path order is part order."""
    if not 1 <= number <= MAX_PART_NUMBER:
        raise invalid_argument(f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
                               "partNumber", str(number))
    return f"{upload_folder(upload_id)}/{number:05d}"


def part_number_of(path: str) -> int | None:
    """The part number of a part file's path, or None for the upload's other files (``info``)."""
    name = path.rpartition("/")[2]
    return int(name) if len(name) == 5 and name.isdigit() else None
