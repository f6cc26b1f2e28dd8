"""ListObjects V2 and V1, paged over ``ls_page`` without holding more than a page.

The gateway owns the I/O; this module decides what to fetch and builds the
answer.  Drive it like this::

    plan = ListPlan(bucket, query, version=2)
    while (fetch := plan.next_fetch()) is not None:
        start_after, limit = fetch
        files, index, more = await client.ls_page(plan.ls_prefix, start_after=start_after, limit=limit)
        plan.take(files, more)
    body = xml.list_objects(plan.result())

``plan.ls_prefix`` is ``/bucket/`` + the S3 prefix: a string prefix, as
``ls_page`` takes it.  ``files`` are the page's entries in path order, any
objects with ``path``, ``size``, ``modified_ns`` and ``sha256`` (and
``attrs.etag`` when they have one): ``FileInfo``.

With a delimiter, keys roll up into CommonPrefixes.  A common prefix may
cover millions of files, so when a page ends inside one the next fetch
starts *after* it (``start_after = prefix + U+10FFFF x n``, greater than
any real key below it unless the key itself holds ``n`` such characters,
in which case ``n`` doubles): one fetch per common prefix, not one per
file.  The answer is exact: ``IsTruncated`` is true only when another key
or common prefix really follows (the plan looks one item ahead).

Resuming: a V2 continuation token is opaque (urlsafe base64 of a version
tag and the last key or common prefix returned) and is checked on the way
back in; ``start-after`` and V1's ``marker`` are plain keys.  Whatever the
resume point R, a key is listed if it is greater than R and a common
prefix if it is greater than R, so a common prefix returned on one page is
not returned again on the next.  V1's NextMarker is given only when a
delimiter is (as S3 does; without one clients resume from the last key).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storg.s3.errors import invalid_argument
from storg.s3.names import check_bucket

MAX_KEYS = 1000
PAGE = 1000
"""The most files asked of one ``ls_page`` call."""
LAST_CHAR = "\U0010ffff"
_TOKEN_TAG = "storg1:"


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One object of a listing: its key (below the bucket), size, modification time, ETag (unquoted)."""

    key: str
    size: int
    modified_ns: int
    etag: str


@dataclass(slots=True)
class ListResult:
    """What the XML layer renders (:func:`storg.s3.xml.list_objects`)."""

    version: int
    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    encoding_type: str
    start_after: str
    continuation_token: str
    marker: str
    fetch_owner: bool
    entries: list[ListEntry] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_continuation_token: str = ""
    next_marker: str = ""

    @property
    def key_count(self) -> int:
        return len(self.entries) + len(self.common_prefixes)


def encode_token(resume: str) -> str:
    """The opaque continuation token for resuming after ``resume`` (a key or a common prefix)."""
    return base64.urlsafe_b64encode((_TOKEN_TAG + resume).encode("utf-8")).decode("ascii").rstrip("=")


def decode_token(token: str) -> str:
    """The resume point a token carries, or InvalidArgument when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        text = ""
    if not text.startswith(_TOKEN_TAG):
        raise invalid_argument("The continuation token provided is incorrect", "continuation-token", token)
    return text[len(_TOKEN_TAG):]


def etag_of(info: Any) -> str:
    """A file's ETag, unquoted: the stored MD5 (``attrs.etag``), else its SHA-256 hex (older files)."""
    attrs = getattr(info, "attrs", None)
    etag = getattr(attrs, "etag", "") if attrs is not None else ""
    return str(etag or info.sha256)


def _max_keys(text: str | None) -> int:
    if text is None or text == "":
        return MAX_KEYS
    if not text.isdigit():
        raise invalid_argument("Provided max-keys not an integer or within integer range", "max-keys", text)
    return min(int(text), MAX_KEYS)


class ListPlan:
    """The state of one ListObjects request, from its query parameters to its result."""

    def __init__(self, bucket: str, query: Mapping[str, str], *, version: int = 2) -> None:
        if version not in (1, 2):
            raise ValueError(f"ListObjects version {version}")
        self.bucket = check_bucket(bucket)
        self.version = version
        self.prefix = query.get("prefix", "")
        self.delimiter = query.get("delimiter", "")
        self.max_keys = _max_keys(query.get("max-keys"))
        self.encoding_type = query.get("encoding-type", "")
        if self.encoding_type not in ("", "url"):
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type",
                                   self.encoding_type)
        self.start_after = query.get("start-after", "") if version == 2 else ""
        self.token = query.get("continuation-token", "") if version == 2 else ""
        self.marker = query.get("marker", "") if version == 1 else ""
        self.fetch_owner = version == 1 or query.get("fetch-owner", "").lower() == "true"
        if "continuation-token" in query and version == 2 and not self.token:
            raise invalid_argument("The continuation token provided is incorrect", "continuation-token", "")
        resume = decode_token(self.token) if self.token else (self.start_after or self.marker)
        self._base = f"/{self.bucket}/"
        self.ls_prefix = self._base + self.prefix
        """The ``prefix`` argument of every ``ls_page`` call."""
        self._resume = resume
        self._fetch_after = self._base + resume if resume else ""
        self._entries: list[ListEntry] = []
        self._prefixes: list[str] = []
        self._last = ""            # the last key or common prefix returned
        self._open_prefix = ""     # the common prefix the scan is inside of, if any
        self._jump = 0             # how many LAST_CHARs the last skip past _open_prefix used
        self._truncated = False
        self._done = self.max_keys == 0

    def next_fetch(self) -> tuple[str, int] | None:
        """``(start_after, limit)`` for the next ``ls_page`` call, or None: :meth:`result` is ready."""
        if self._done:
            return None
        wanted = self.max_keys - self._count() + 1  # one more than needed: is there anything after?
        return self._fetch_after, PAGE if self.delimiter else min(PAGE, max(wanted, 1))

    def take(self, files: Iterable[Any], more: bool) -> None:
        """One page of ``ls_page``'s answer (its files, and whether more follow)."""
        last_path = ""
        for info in files:
            last_path = info.path
            if self._done:
                break
            if not info.path.startswith(self.ls_prefix):
                continue
            self._one(info.path[len(self._base):], info)
        if self._done:
            return
        if not more or not last_path:
            self._done = True
            return
        if self._open_prefix and last_path[len(self._base):].startswith(self._open_prefix):
            # The page ended inside a common prefix: skip the rest of it in one step.
            self._jump = self._jump * 2 if self._jump else 4
            self._fetch_after = self._base + self._open_prefix + LAST_CHAR * self._jump
        else:
            self._fetch_after = last_path

    def _one(self, key: str, info: Any) -> None:
        if self._open_prefix and key.startswith(self._open_prefix):
            return
        if key <= self._resume:
            return
        if self.delimiter:
            cut = key.find(self.delimiter, len(self.prefix))
            if cut >= 0:
                common = key[:cut + len(self.delimiter)]
                if common != self._open_prefix:
                    self._open_prefix, self._jump = common, 0
                if common <= self._resume:
                    return
                self._add(common, None)
                return
        self._add(key, ListEntry(key, info.size, info.modified_ns, etag_of(info)))

    def _add(self, name: str, entry: ListEntry | None) -> None:
        if self._count() == self.max_keys:
            self._truncated = True  # the one item looked ahead at: it exists, so the answer is cut
            self._done = True
            return
        if entry is None:
            self._prefixes.append(name)
        else:
            self._entries.append(entry)
        self._last = name

    def _count(self) -> int:
        return len(self._entries) + len(self._prefixes)

    def result(self) -> ListResult:
        """The answer, once :meth:`next_fetch` has returned None."""
        if not self._done:
            raise RuntimeError("the listing is not finished: call next_fetch until it returns None")
        result = ListResult(version=self.version, bucket=self.bucket, prefix=self.prefix, delimiter=self.delimiter,
                            max_keys=self.max_keys, encoding_type=self.encoding_type, start_after=self.start_after,
                            continuation_token=self.token, marker=self.marker, fetch_owner=self.fetch_owner,
                            entries=self._entries, common_prefixes=self._prefixes, truncated=self._truncated)
        if self._truncated:
            if self.version == 2:
                result.next_continuation_token = encode_token(self._last)
            elif self.delimiter:
                result.next_marker = self._last
        return result
