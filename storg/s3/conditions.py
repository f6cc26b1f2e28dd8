"""Conditional requests (RFC 9110 section 13) for S3 objects.

For GET and HEAD, :func:`evaluate` applies the preconditions in RFC 9110's
order (13.2.2), which is also what S3 documents for its combinations:

1. If-Match: none of its ETags matches (strong comparison; ``*`` matches
   any existing object) -> 412; otherwise step 2 is skipped;
2. If-Unmodified-Since: modified after it -> 412;
3. If-None-Match: one of its ETags matches (weak comparison; ``*``) ->
   304 for GET/HEAD (412 for other methods); otherwise step 4 is skipped;
4. If-Modified-Since (GET/HEAD): not modified after it -> 304;
5. None: serve the request.

Dates are HTTP-dates (IMF-fixdate, and the two obsolete forms recipients
must accept); a date that does not parse makes its header ignored, as RFC
9110 says.  Times compare at whole seconds, the resolution HTTP-dates have.
ETags are compared without their quotes, and a bare unquoted tag is taken
as the tag (some clients send ``If-Match: abc``).

For writes, S3 supports only ``If-None-Match: *`` and a single
``If-Match`` ETag: :func:`write_conditions`.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime

from storg.s3.errors import S3Error

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


def http_date(seconds: float) -> str:
    """IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), for Last-Modified."""
    return formatdate(int(seconds), usegmt=True)


def parse_http_date(text: str) -> float | None:
    """Epoch seconds of an HTTP-date, or None when it is not one."""
    try:
        parsed = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # asctime has no zone; HTTP-dates are all GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque tag) for each entry of an ETag list; None for ``*``."""
    if header.strip() == "*":
        return None
    tags = []
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        weak = item.startswith(("W/", "w/"))
        if weak:
            item = item[2:]
        tags.append((weak, item.strip('"')))
    return tags


def _unquote(etag: str) -> str:
    if etag.startswith(("W/", "w/")):
        etag = etag[2:]
    return etag.strip('"')


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an If-Match/If-None-Match list matches ``etag`` (strong or weak comparison)."""
    tags = _tags(header)
    if tags is None:
        return True
    current = _unquote(etag)
    return any(tag == current and (weak or not is_weak) for is_weak, tag in tags)


def evaluate(*, if_match: str | None = None, if_none_match: str | None = None,
             if_modified_since: str | None = None, if_unmodified_since: str | None = None,
             etag: str, last_modified: float, method: str = "GET") -> int | None:
    """None to serve the request, 304 or 412 (see the module's docstring for the order)."""
    safe = method.upper() in ("GET", "HEAD")
    modified = int(last_modified)
    if if_match is not None and if_match.strip():
        if not etag_matches(if_match, etag, weak=False):
            return PRECONDITION_FAILED
    elif if_unmodified_since:
        limit = parse_http_date(if_unmodified_since)
        if limit is not None and modified > limit:
            return PRECONDITION_FAILED
    if if_none_match is not None and if_none_match.strip():
        if etag_matches(if_none_match, etag, weak=True):
            return NOT_MODIFIED if safe else PRECONDITION_FAILED
    elif if_modified_since and safe:
        since = parse_http_date(if_modified_since)
        if since is not None and modified <= since:
            return NOT_MODIFIED
    return None


def write_conditions(if_match: str | None, if_none_match: str | None) -> tuple[bool, str]:
    """``(if_absent, if_match_etag)`` for a conditional PUT or CompleteMultipartUpload, as S3 allows them.

    ``If-None-Match: *`` -> only if absent; ``If-Match: "etag"`` -> only if
    the stored ETag is that one.  Anything else is NotImplemented (501), as
    on S3; both at once is refused too.
    """
    if_absent = False
    wanted = ""
    if if_none_match is not None and if_none_match.strip():
        if if_none_match.strip() != "*":
            raise S3Error("NotImplemented", "If-None-Match on a write supports only '*'", 501,
                          details=(("Header", "If-None-Match"),))
        if_absent = True
    if if_match is not None and if_match.strip():
        tags = _tags(if_match)
        if tags is None or len(tags) != 1 or tags[0][0]:
            raise S3Error("NotImplemented", "If-Match on a write supports exactly one strong ETag", 501,
                          details=(("Header", "If-Match"),))
        wanted = tags[0][1]
    if if_absent and wanted:
        raise S3Error("InvalidRequest", "If-Match and If-None-Match cannot both be given on a write", 400)
    return if_absent, wanted
