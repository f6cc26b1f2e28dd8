"""Checksums: check values, botocore's own implementations, composite and full-object multipart forms."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from botocore.httpchecksum import Crc32Checksum, CrtCrc32cChecksum, CrtCrc64NvmeChecksum, Sha1Checksum, Sha256Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.s3 import checksums
from storg.s3.errors import S3Error

CHECK = b"123456789"


@pytest.mark.parametrize("algorithm,value", [("CRC32", 0xCBF43926), ("CRC32C", 0xE3069283),
                                             ("CRC64NVME", 0xAE8B14860A799888)])
def test_crc_check_values(algorithm, value):
    size = checksums.DIGEST_SIZES[algorithm]
    assert checksums.checksum_of(algorithm, CHECK) == base64.b64encode(value.to_bytes(size, "big")).decode()


BOTOCORE = {"CRC32": Crc32Checksum, "CRC32C": CrtCrc32cChecksum, "CRC64NVME": CrtCrc64NvmeChecksum,
            "SHA1": Sha1Checksum, "SHA256": Sha256Checksum}


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4000), cut=st.integers(0, 4000), algorithm=st.sampled_from(checksums.ALGORITHMS))
def test_property_same_as_botocore_in_any_pieces(data, cut, algorithm):
    ours = checksums.new(algorithm)
    ours.update(data[:cut])
    ours.update(memoryview(data[cut:]))
    theirs = BOTOCORE[algorithm]()
    theirs.update(data)
    assert ours.b64() == theirs.b64digest()


def test_header_names():
    assert checksums.header_name("CRC64NVME") == "x-amz-checksum-crc64nvme"
    assert checksums.algorithm_of_header("X-Amz-Checksum-CRC32C") == "CRC32C"
    assert checksums.algorithm_of_header("x-amz-checksum-mode") is None
    assert checksums.algorithm_of_header("x-amz-checksum-type") is None


def test_expect_and_bad_values():
    good = checksums.checksum_of("CRC32", b"abc")
    checksums.expect("CRC32", good, good)
    with pytest.raises(S3Error) as info:
        checksums.expect("CRC32", checksums.checksum_of("CRC32", b"abd"), good)
    assert info.value.code == "BadDigest" and info.value.status == 400
    for bad in ("not base64!", "AAAA", base64.b64encode(b"12345").decode()):
        with pytest.raises(S3Error) as info:
            checksums.raw("CRC32", bad)
        assert info.value.code == "InvalidRequest"
    md5 = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    assert checksums.checksum_of("MD5", b"abc") == md5
    with pytest.raises(S3Error) as info:
        checksums.expect("MD5", md5, checksums.checksum_of("MD5", b"abd"))
    assert "Content-MD5" in info.value.message
    with pytest.raises(S3Error) as info:
        checksums.raw("MD5", "short")
    assert info.value.code == "InvalidDigest"


def test_composite_is_the_checksum_of_the_raw_part_checksums():
    parts = [b"a" * 1000, b"b" * 10, b"c"]
    digests = [hashlib.sha256(p).digest() for p in parts]
    expected = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode() + "-3"
    b64s = [checksums.checksum_of("SHA256", p) for p in parts]
    assert checksums.composite("SHA256", b64s) == expected
    crcs = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    assert checksums.composite("CRC32", [base64.b64encode(c).decode() for c in crcs]) == \
        base64.b64encode(zlib.crc32(b"".join(crcs)).to_bytes(4, "big")).decode() + "-3"
    with pytest.raises(S3Error):
        checksums.composite("CRC64NVME", [checksums.checksum_of("CRC64NVME", b"x")])


@settings(max_examples=40, deadline=None)
@given(parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
       algorithm=st.sampled_from(["CRC32", "CRC32C", "CRC64NVME"]))
def test_property_full_object_crc_is_the_crc_of_the_whole(parts, algorithm):
    given_parts = [(checksums.checksum_of(algorithm, p), len(p)) for p in parts]
    assert checksums.full_object(algorithm, given_parts) == checksums.checksum_of(algorithm, b"".join(parts))


def test_multipart_types_follow_s3():
    assert checksums.multipart_type("CRC64NVME") == checksums.FULL_OBJECT
    assert checksums.multipart_type("CRC32") == checksums.COMPOSITE
    assert checksums.multipart_type("crc32c", "full_object") == checksums.FULL_OBJECT
    assert checksums.multipart_type("SHA256") == checksums.COMPOSITE
    for algorithm, wrong in (("CRC64NVME", "COMPOSITE"), ("SHA1", "FULL_OBJECT"), ("CRC32", "BOTH")):
        with pytest.raises(S3Error):
            checksums.multipart_type(algorithm, wrong)
    with pytest.raises(S3Error):
        checksums.full_object("SHA256", [])
    with pytest.raises(S3Error):
        checksums.new("XXHASH64")
