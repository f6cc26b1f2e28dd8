"""The XML documents as boto3 parses them, and the request-body parsers' refusals."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.s3 import xml
from storg.s3.errors import S3Error, render_error
from storg.s3.listing import ListEntry, ListResult

from tests.s3.boto_parse import client_answering

T = "2024-05-06T07:08:09.123Z"


def test_iso8601():
    assert xml.iso8601(0) == "1970-01-01T00:00:00.000Z"
    assert xml.iso8601(1715000000.9996) == "2024-05-06T12:53:21.000Z"
    assert xml.iso8601(1715000000.25) == "2024-05-06T12:53:20.250Z"


def test_errors_parse_as_client_errors():
    body = render_error(S3Error("NoSuchKey", "The specified key does not exist.", 404), "/b/k & <x>", "req-1")
    with pytest.raises(ClientError) as info:
        client_answering(body, 404).get_object(Bucket="bkt", Key="k")
    err = info.value.response["Error"]
    assert err["Code"] == "NoSuchKey" and err["Message"] == "The specified key does not exist."
    assert b"<Resource>/b/k &amp; &lt;x&gt;</Resource>" in body
    assert b"<RequestId>req-1</RequestId>" in body


def test_list_buckets():
    out = client_answering(xml.list_buckets([("alpha", T), ("beta", T)])).list_buckets()
    assert [b["Name"] for b in out["Buckets"]] == ["alpha", "beta"]
    assert out["Buckets"][0]["CreationDate"].year == 2024 and out["Owner"]["ID"] == "storg"


def test_location_constraint():
    assert client_answering(xml.location_constraint("")).get_bucket_location(Bucket="bkt")[
        "LocationConstraint"] is None
    assert client_answering(xml.location_constraint("eu-west-1")).get_bucket_location(Bucket="bkt")[
        "LocationConstraint"] == "eu-west-1"


def listing_result(version, **kw):
    defaults = dict(version=version, bucket="bkt", prefix="p/", delimiter="/", max_keys=2, encoding_type="",
                    start_after="", continuation_token="", marker="", fetch_owner=version == 1,
                    entries=[ListEntry("p/a b+c&d", 5, 1715000000_000_000_000, "0123abcd")],
                    common_prefixes=["p/sub dir/"], truncated=True)
    defaults.update(kw)
    return ListResult(**defaults)


def test_list_objects_v2_as_boto3_reads_it():
    result = listing_result(2, next_continuation_token="TOKEN", continuation_token="OLD", start_after="p/0")
    client = client_answering(xml.list_objects(result))
    out = client.list_objects_v2(Bucket="bkt", Prefix="p/", Delimiter="/", MaxKeys=2)
    assert out["KeyCount"] == 2 and out["IsTruncated"] is True and out["NextContinuationToken"] == "TOKEN"
    assert out["ContinuationToken"] == "OLD" and out["StartAfter"] == "p/0"
    (entry,) = out["Contents"]
    assert entry["Key"] == "p/a b+c&d" and entry["ETag"] == '"0123abcd"' and entry["Size"] == 5
    assert entry["LastModified"].year == 2024 and entry["StorageClass"] == "STANDARD"
    assert out["CommonPrefixes"] == [{"Prefix": "p/sub dir/"}]


def test_list_objects_url_encoding_round_trips_through_boto3():
    """boto3 always asks for encoding-type=url and decodes with unquote_plus: every key must come back."""
    nasty = "p/ä ö+%2B&<>?#=;:\t~"
    result = listing_result(2, encoding_type="url", prefix="p/", entries=[ListEntry(nasty, 1, 0, "e")],
                            common_prefixes=["p/x y+z/"])
    body = xml.list_objects(result)
    assert b"%20" in body and b"<EncodingType>url</EncodingType>" in body
    out = client_answering(body).list_objects_v2(Bucket="bkt", Prefix="p/")
    assert out["Contents"][0]["Key"] == nasty and out["CommonPrefixes"] == [{"Prefix": "p/x y+z/"}]


def test_list_objects_v1():
    result = listing_result(1, marker="p/0", next_marker="p/sub dir/")
    out = client_answering(xml.list_objects(result)).list_objects(Bucket="bkt", Prefix="p/", Delimiter="/")
    assert out["Marker"] == "p/0" and out["NextMarker"] == "p/sub dir/" and out["IsTruncated"] is True
    assert out["Contents"][0]["Owner"]["ID"] == "storg" and "KeyCount" not in out


def test_copy_results():
    out = client_answering(xml.copy_object_result("abc", T, [("CRC32", "AAAAAA==")])).copy_object(
        Bucket="bkt", Key="k", CopySource="bkt/src")
    assert out["CopyObjectResult"]["ETag"] == '"abc"' and out["CopyObjectResult"]["ChecksumCRC32"] == "AAAAAA=="
    out = client_answering(xml.copy_part_result('"abc"', T)).upload_part_copy(
        Bucket="bkt", Key="k", CopySource="bkt/src", UploadId="u", PartNumber=1)
    assert out["CopyPartResult"]["ETag"] == '"abc"' and out["CopyPartResult"]["LastModified"].year == 2024


def test_delete_result():
    body = xml.delete_result(["a", "b c"], [("d", "AccessDenied", "Access Denied")])
    out = client_answering(body).delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "a"}]})
    assert [d["Key"] for d in out["Deleted"]] == ["a", "b c"]
    assert out["Errors"] == [{"Key": "d", "Code": "AccessDenied", "Message": "Access Denied"}]
    quiet = client_answering(xml.delete_result([], [])).delete_objects(
        Bucket="bkt", Delete={"Objects": [{"Key": "a"}], "Quiet": True})
    assert "Deleted" not in quiet


def test_multipart_documents():
    out = client_answering(xml.initiate_multipart_upload("bkt", "k", "u1")).create_multipart_upload(
        Bucket="bkt", Key="k")
    assert out["UploadId"] == "u1" and out["Key"] == "k"
    out = client_answering(xml.complete_multipart_upload("/bkt/k", "bkt", "k", "ff-3",
                                                         [("CRC32", "AAAAAA==-3")], "COMPOSITE")) \
        .complete_multipart_upload(Bucket="bkt", Key="k", UploadId="u1",
                                   MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "x"}]})
    assert out["ETag"] == '"ff-3"' and out["ChecksumCRC32"] == "AAAAAA==-3" and out["Location"] == "/bkt/k"
    parts = [(1, "e1", 5 << 20, T, [("CRC32", "AAAAAA==")]), (2, "e2", 10, T, ())]
    out = client_answering(xml.list_parts("bkt", "k", "u1", parts, marker=0, max_parts=2, truncated=True,
                                          checksum_algorithm="CRC32")).list_parts(Bucket="bkt", Key="k",
                                                                                  UploadId="u1")
    assert [p["PartNumber"] for p in out["Parts"]] == [1, 2] and out["NextPartNumberMarker"] == 2
    assert out["IsTruncated"] and out["Parts"][0]["ChecksumCRC32"] == "AAAAAA==" and out["Parts"][1]["Size"] == 10
    assert out["ChecksumAlgorithm"] == "CRC32"
    uploads = [("a", "u1", T), ("b", "u2", T)]
    out = client_answering(xml.list_multipart_uploads("bkt", uploads, prefix="", max_uploads=2, truncated=True,
                                                      common_prefixes=["d/"], delimiter="/")) \
        .list_multipart_uploads(Bucket="bkt")
    assert [u["UploadId"] for u in out["Uploads"]] == ["u1", "u2"]
    assert out["NextKeyMarker"] == "b" and out["NextUploadIdMarker"] == "u2" and out["IsTruncated"]
    assert out["CommonPrefixes"] == [{"Prefix": "d/"}] and out["Uploads"][0]["Initiated"].year == 2024


# -- parsers: fed what boto3 itself sends ---------------------------------------------------------------------

def sent_body(call):
    client = client_answering(b"<x/>")
    try:
        call(client)
    except Exception:  # noqa: BLE001  (the canned answer may not parse; the request is what we want)
        pass
    body = client.sent[-1].body
    return body.read() if hasattr(body, "read") else body


def test_parse_delete_from_boto3():
    keys = ["a", " spaced ", "ü/&<"]
    body = sent_body(lambda c: c.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": k} for k in keys],
                                                                      "Quiet": True}))
    assert xml.parse_delete(body) == (keys, True)
    assert xml.parse_delete(b"<Delete><Object><Key>x</Key></Object></Delete>") == (["x"], False)


def test_parse_complete_from_boto3():
    body = sent_body(lambda c: c.complete_multipart_upload(
        Bucket="bkt", Key="k", UploadId="u", MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": '"e1"', "ChecksumCRC32": "AAAAAA=="}, {"PartNumber": 2, "ETag": '"e2"'}]}))
    parts = xml.parse_complete_multipart_upload(body)
    assert [(p.part_number, p.etag, p.checksums) for p in parts] == [(1, "e1", (("CRC32", "AAAAAA=="),)),
                                                                     (2, "e2", ())]


def test_parse_create_bucket_from_boto3():
    body = sent_body(lambda c: c.create_bucket(Bucket="bkt", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"}))
    assert xml.parse_create_bucket(body) == "eu-west-1"
    assert xml.parse_create_bucket(b"") == ""


BAD = [
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><Delete><Object><Key>&b;'
    b'</Key></Object></Delete>',
    b'<!DOCTYPE d SYSTEM "file:///etc/passwd"><Delete/>',
    b"<Delete><Object><Key>&undefined;</Key></Object></Delete>",
    b"<Delete><Object><Key>x</Key></Object>",
    b"<NotDelete><Object><Key>x</Key></Object></NotDelete>",
    b"<Delete></Delete>",
    b"<Delete><Object></Object></Delete>",
    b"<Delete>" + b"<a>" * 10 + b"</a>" * 10 + b"</Delete>",
    b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
    b"",
]


@pytest.mark.parametrize("body", BAD)
def test_parse_delete_refusals(body):
    with pytest.raises(S3Error) as info:
        xml.parse_delete(body)
    assert info.value.code == "MalformedXML" and info.value.status == 400


def test_bodies_over_the_cap_are_refused_unparsed():
    with pytest.raises(S3Error) as info:
        xml.parse_delete(b" " * (xml.MAX_BODY + 1))
    assert info.value.code == "MaxMessageLengthExceeded"


@pytest.mark.parametrize("body", [b"<CompleteMultipartUpload/>",
                                  b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>",
                                  b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part>"
                                  b"</CompleteMultipartUpload>"])
def test_parse_complete_refusals(body):
    with pytest.raises(S3Error):
        xml.parse_complete_multipart_upload(body)


def test_namespaced_bodies_are_read():
    body = (b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>k</Key></Object>'
            b"<Quiet>true</Quiet></Delete>")
    assert xml.parse_delete(body) == (["k"], True)
    prefixed = b'<s3:Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Object><s3:Key>k</s3:Key>' \
               b"</s3:Object></s3:Delete>"
    assert xml.parse_delete(prefixed) == (["k"], False)


def test_control_characters_in_keys_are_escaped():
    body = xml.delete_result(["a\x01b"])
    assert b"&#x1;" in body



@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                             min_size=1, max_size=20), min_size=1, max_size=4, unique=True))
def test_property_any_key_survives_boto3_with_url_encoding(keys):
    result = listing_result(2, encoding_type="url", prefix="", delimiter="",
                            entries=[ListEntry(k, 1, 0, "e") for k in sorted(keys)], common_prefixes=[],
                            truncated=False)
    out = client_answering(xml.list_objects(result)).list_objects_v2(Bucket="bkt")
    assert [c["Key"] for c in out["Contents"]] == sorted(keys)


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.binary(max_size=300),
                      st.builds(lambda a, b: b"<Delete><Object><Key>" + a + b"</Key></Object>" + b,
                                st.binary(max_size=40), st.binary(max_size=40))))
def test_property_parsers_refuse_junk_with_s3_errors_only(body):
    for parse in (xml.parse_delete, xml.parse_complete_multipart_upload, xml.parse_create_bucket):
        try:
            parse(body)
        except S3Error as err:
            assert err.status == 400


def test_a_key_of_many_entity_references_parses_whole():
    """Text arrives in large runs (buffer_text), not one handler call per reference: the key is intact."""
    body = b"<Delete><Object><Key>" + b"a&amp;" * 200_000 + b"</Key></Object></Delete>"
    keys, quiet = xml.parse_delete(body)
    assert keys == ["a&" * 200_000] and quiet is False
