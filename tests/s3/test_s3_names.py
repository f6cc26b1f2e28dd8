"""Bucket names and the key <-> path mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storg import paths
from storg.s3 import names
from storg.s3.errors import S3Error


@pytest.mark.parametrize("name", ["abc", "my-bucket", "a.b.c", "0123", "x" * 63, "logs-2024.eu"])
def test_valid_buckets(name):
    assert names.check_bucket(name) == name and names.is_bucket(name)


@pytest.mark.parametrize("name", ["ab", "x" * 64, "Upper", "under_score", "-start", "end-", "a..b", "a.-b",
                                  "192.168.0.1", "xn--abc", "name-s3alias", ".storg-multipart", "", "sp ace"])
def test_invalid_buckets(name):
    with pytest.raises(S3Error) as info:
        names.check_bucket(name)
    assert info.value.code == "InvalidBucketName" and info.value.status == 400
    assert not names.is_bucket(name)


def test_the_multipart_folder_is_no_bucket():
    assert not names.is_bucket(names.MULTIPART_ROOT.strip("/"))


def test_object_path_and_back():
    assert names.object_path("bkt", "dir/file.txt") == "/bkt/dir/file.txt"
    assert names.split_path("/b/dir/file.txt") == ("b", "dir/file.txt")
    with pytest.raises(ValueError):
        names.split_path("/toplevel")


@pytest.mark.parametrize("key,rule", [("", "empty"), ("/lead", "starts with '/'"), ("trail/", "ends with '/'"),
                                      ("a//b", "'//'"), ("a/./b", "'.'"), ("../x", "'..'"), ("a\x00b", "NUL")])
def test_keys_storg_cannot_store_are_refused_naming_the_rule(key, rule):
    with pytest.raises(S3Error) as info:
        names.object_path("bkt", key)
    assert info.value.code == "InvalidArgument" and rule in info.value.message


def test_key_length_limits():
    names.object_path("bkt", "k" * 1000)
    with pytest.raises(S3Error) as info:
        names.object_path("bkt", "k" * 1025)
    assert info.value.code == "KeyTooLongError"
    with pytest.raises(S3Error) as info:
        names.object_path("bkt", "é" * 513)  # 1,026 bytes of UTF-8
    assert info.value.code == "KeyTooLongError"


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200))
def test_property_every_accepted_key_round_trips(key):
    try:
        path = names.object_path("bucket", key)
    except S3Error:
        assert names.key_problem(key) or len(key.encode()) > names.MAX_KEY_BYTES \
            or len(("/bucket/" + key).encode()) > paths.MAX_PATH_BYTES
        return
    assert names.split_path(path) == ("bucket", key)
    assert paths.normalize_path(path) == path


def test_upload_ids_and_parts():
    upload = names.new_upload_id()
    assert names.check_upload_id(upload) == upload and upload != names.new_upload_id()
    assert names.part_path(upload, 7) == f"{names.MULTIPART_ROOT}/{upload}/00007"
    assert names.upload_info_path(upload).endswith("/info")
    assert names.part_number_of(names.part_path(upload, 10000)) == 10000
    assert names.part_number_of(names.upload_info_path(upload)) is None
    for bad in ("../../etc", "ABC", "", upload + "0"):
        with pytest.raises(S3Error) as info:
            names.upload_folder(bad)
        assert info.value.code == "NoSuchUpload"
    assert names.part_number("1") == 1 and names.part_number("10000") == 10000
    for bad in ("0", "10001", "-1", "x", ""):
        with pytest.raises(S3Error):
            names.part_number(bad)
    assert sorted(names.part_path(upload, n) for n in (10, 2, 100)) == [names.part_path(upload, n)
                                                                        for n in (2, 10, 100)]
