"""``Range: bytes=...`` against an object's size (RFC 9110 section 14, as S3 applies it).

:func:`parse` gives ``(offset, length)`` to serve with 206, ``None`` to
ignore the header and serve the whole object with 200, or raises
``InvalidRange`` (416, with ``Content-Range: bytes */SIZE``).

* ``bytes=a-b`` (``b`` past the end is cut to the end), ``bytes=a-``,
  ``bytes=-n`` (the last ``n`` bytes; all of them if ``n`` >= size);
* unsatisfiable (``a`` >= size, ``-0``, any range of an empty object): 416;
* other units, and headers that are not valid byte ranges (``a`` > ``b``,
  garbage): ignored, as RFC 9110 lets a server do and S3 does;
* several ranges (``bytes=0-1,5-9``): S3 does not serve multipart/byteranges
  and answers them with the whole object; so does this (None).
"""

from __future__ import annotations

import re

from storg.s3.errors import S3Error

_SPEC = re.compile(r"(\d*)-(\d*)")


def unsatisfiable(header: str, size: int) -> S3Error:
    return S3Error("InvalidRange", "The requested range is not satisfiable", 416,
                   details=(("RangeRequested", header), ("ActualObjectSize", str(size))),
                   headers=(("Content-Range", f"bytes */{size}"),))


def parse(header: str, size: int) -> tuple[int, int] | None:
    """``(offset, length)`` of the range to serve, None to serve it all, or InvalidRange."""
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    match = _SPEC.fullmatch(spec)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            raise unsatisfiable(header, size)
        return start, min(end, size - 1) - start + 1
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise unsatisfiable(header, size)
    length = min(suffix, size)
    return size - length, length


def content_range(offset: int, length: int, size: int) -> str:
    """The ``Content-Range`` of a 206: ``bytes first-last/size``."""
    return f"bytes {offset}-{offset + length - 1}/{size}"
