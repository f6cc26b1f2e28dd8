"""Range: bytes=... against a size (RFC 9110 section 14, S3's choices)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storg.s3 import ranges
from storg.s3.errors import S3Error


@pytest.mark.parametrize("header,size,expected", [
    ("bytes=0-9", 100, (0, 10)), ("bytes=90-200", 100, (90, 10)), ("bytes=99-99", 100, (99, 1)),
    ("bytes=10-", 100, (10, 90)), ("bytes=-10", 100, (90, 10)), ("bytes=-500", 100, (0, 100)),
    ("bytes = 5-6", 100, (5, 2)), ("BYTES=0-0", 1, (0, 1)),
])
def test_satisfiable(header, size, expected):
    assert ranges.parse(header, size) == expected


@pytest.mark.parametrize("header,size", [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
                                         ("bytes=0-", 0), ("bytes=-1", 0)])
def test_unsatisfiable_is_416_with_the_size(header, size):
    with pytest.raises(S3Error) as info:
        ranges.parse(header, size)
    err = info.value
    assert err.code == "InvalidRange" and err.status == 416
    assert ("Content-Range", f"bytes */{size}") in err.headers


@pytest.mark.parametrize("header", ["items=0-1", "bytes=5-1", "bytes=abc", "bytes=", "bytes=-", "bytes=0-1,5-9",
                                    "bytes 0-1", "bytes=1-2-3", "bytes=0x1-2"])
def test_ignored_headers_serve_the_whole_object(header):
    assert ranges.parse(header, 100) is None


def test_content_range():
    assert ranges.content_range(0, 10, 100) == "bytes 0-9/100"


@given(size=st.integers(1, 10_000), a=st.integers(0, 20_000), b=st.integers(0, 20_000))
def test_property_a_served_range_lies_inside_the_object(size, a, b):
    try:
        got = ranges.parse(f"bytes={a}-{b}", size)
    except S3Error:
        assert a >= size
        return
    if got is None:
        assert b < a
        return
    offset, length = got
    assert offset == a and 1 <= length and offset + length <= size and offset + length - 1 == min(b, size - 1)
