"""If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since in RFC 9110's order."""

from __future__ import annotations

import pytest

from storg.s3 import conditions
from storg.s3.conditions import evaluate, http_date
from storg.s3.errors import S3Error

NOW = 1_700_000_000.7
ETAG = "0123abcd"
BEFORE = http_date(NOW - 3600)
AFTER = http_date(NOW + 3600)
AT = http_date(NOW)


def ev(method="GET", **headers):
    return evaluate(etag=ETAG, last_modified=NOW, method=method, **headers)


def test_no_conditions_serve():
    assert ev() is None


@pytest.mark.parametrize("value,result", [('"0123abcd"', None), ("0123abcd", None), ('"x", "0123abcd"', None),
                                          ("*", None), ('"other"', 412), ('W/"0123abcd"', 412)])
def test_if_match_is_strong(value, result):
    assert ev(if_match=value) == result


@pytest.mark.parametrize("value,result", [('"0123abcd"', 304), ('W/"0123abcd"', 304), ("*", 304),
                                          ('"x", W/"0123abcd"', 304), ('"other"', None)])
def test_if_none_match_is_weak(value, result):
    assert ev(if_none_match=value) == result


def test_if_none_match_on_other_methods_is_412():
    assert ev("PUT", if_none_match="*") == 412


def test_dates():
    assert ev(if_modified_since=BEFORE) is None
    assert ev(if_modified_since=AT) == 304  # same second: not modified since
    assert ev(if_modified_since=AFTER) == 304
    assert ev(if_unmodified_since=BEFORE) == 412
    assert ev(if_unmodified_since=AT) is None
    assert ev(if_unmodified_since=AFTER) is None
    assert ev(if_modified_since="not a date") is None
    assert ev(if_unmodified_since="yesterday") is None
    assert ev(if_modified_since="Sunday, 06-Nov-94 08:49:37 GMT") is None  # RFC 850, obsolete but accepted


def test_the_rfc_order_and_s3s_documented_combinations():
    # If-Match true and If-Unmodified-Since false: 200 (step 2 is skipped).
    assert ev(if_match=f'"{ETAG}"', if_unmodified_since=BEFORE) is None
    # If-None-Match false (it matches) and If-Modified-Since true: 304.
    assert ev(if_none_match=f'"{ETAG}"', if_modified_since=BEFORE) == 304
    # If-None-Match true (no match) and If-Modified-Since false: 200 (step 4 is skipped).
    assert ev(if_none_match='"other"', if_modified_since=AFTER) is None
    # If-Match fails first even when If-None-Match would say 304.
    assert ev(if_match='"other"', if_none_match=f'"{ETAG}"') == 412


def test_http_date_round_trip():
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert conditions.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert conditions.parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777  # asctime
    assert conditions.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777  # RFC 850
    assert conditions.parse_http_date("garbage") is None


def test_write_conditions():
    assert conditions.write_conditions(None, "*") == (True, "")
    assert conditions.write_conditions('"abc"', None) == (False, "abc")
    assert conditions.write_conditions(None, None) == (False, "")
    for if_match, if_none_match in (('"a", "b"', None), ("*", None), (None, '"abc"'), ('W/"a"', None)):
        with pytest.raises(S3Error) as info:
            conditions.write_conditions(if_match, if_none_match)
        assert info.value.status == 501
    with pytest.raises(S3Error):
        conditions.write_conditions('"a"', "*")
