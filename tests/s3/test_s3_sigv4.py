"""SigV4: AWS's published examples, botocore's signers, and every one-byte change refused."""

from __future__ import annotations

import calendar
import hashlib
import time
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.s3 import sigv4
from storg.s3.errors import S3Error
from storg.s3.sigv4 import authenticate

from tests.s3.signing import ACCESS_KEY, SECRET, crt_sign, lookup, sign

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_NOW = calendar.timegm((2013, 5, 24, 0, 0, 0))


def aws_lookup(key):
    return AWS_SECRET if key == AWS_KEY else None


def code_of(call) -> str:
    with pytest.raises(S3Error) as info:
        call()
    return info.value.code


def test_aws_example_get_object_with_range():
    """"Example: GET Object" of AWS's SigV4 header-auth documentation (examplebucket, test.txt)."""
    auth_value = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                  "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                  "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    headers = [("host", "examplebucket.s3.amazonaws.com"), ("range", "bytes=0-9"),
               ("x-amz-content-sha256", sigv4.EMPTY_SHA256), ("x-amz-date", "20130524T000000Z"),
               ("authorization", auth_value)]
    auth = authenticate("GET", "/test.txt", "", headers, aws_lookup, AWS_NOW)
    assert auth.access_key == AWS_KEY and auth.payload == sigv4.SIGNED and auth.region == "us-east-1"
    assert auth.payload_sha256 == sigv4.EMPTY_SHA256
    tampered = [(n, "bytes=0-10" if n == "range" else v) for n, v in headers]
    assert code_of(lambda: authenticate("GET", "/test.txt", "", tampered, aws_lookup, AWS_NOW)) \
        == "SignatureDoesNotMatch"


def test_aws_example_presigned_get():
    """"Example: presigned URL" of AWS's query-auth documentation (86400 s)."""
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3"
             "%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    headers = [("host", "examplebucket.s3.amazonaws.com")]
    auth = authenticate("GET", "/test.txt", query, headers, aws_lookup, AWS_NOW + 3600)
    assert auth.presigned and auth.payload == sigv4.UNSIGNED
    assert code_of(lambda: authenticate("GET", "/test.txt", query, headers, aws_lookup, AWS_NOW + 86401)) \
        == "AccessDenied"
    assert code_of(lambda: authenticate("GET", "/test.tx", query, headers, aws_lookup, AWS_NOW)) \
        == "SignatureDoesNotMatch"


def test_aws_example_chunked_upload_seed_signature():
    """The seed signature of AWS's chunked-upload example (its chunks: test_s3_chunked)."""
    auth = authenticate("PUT", "/examplebucket/chunkObject.txt", "", aws_chunked_headers(), aws_lookup, AWS_NOW)
    assert auth.payload == sigv4.STREAMING_SIGNED
    assert auth.seed_signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    assert auth.decoded_length == 66560 and auth.amz_date == "20130524T000000Z"
    assert auth.scope == "20130524/us-east-1/s3/aws4_request"


def aws_chunked_headers():
    return [("host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
             "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
             "x-amz-decoded-content-length;x-amz-storage-class,"
             "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"), ("content-length", "66824")]


def accept(req, now=None):
    return authenticate(req.method, req.path, req.query, req.headers, lookup, time.time() if now is None else now)


def test_botocore_header_signature_is_accepted_with_its_payload_hash():
    req = sign(body=b"hello world", headers={"Content-Type": "text/plain", "x-amz-meta-colour": "  dark   blue "})
    auth = accept(req)
    assert auth.access_key == ACCESS_KEY and auth.payload == sigv4.SIGNED
    assert auth.payload_sha256 == hashlib.sha256(b"hello world").hexdigest()
    check = auth.body_check()
    check.update(b"hello ")
    check.update(b"world")
    check.finish()
    bad = auth.body_check()
    bad.update(b"hello worle")
    with pytest.raises(S3Error) as info:
        bad.finish()
    assert info.value.code == "XAmzContentSHA256Mismatch" and info.value.status == 400


KEYS = ["a", "dir/sub/file.txt", "with space", "plus+sign", "per%cent", "tilde~and!bang*(x)", "ünïcødé/日本語",
        "a=b&c=d", "semi;colon,comma", "quote'\"", "#hash?q"]


@pytest.mark.parametrize("key", KEYS)
def test_botocore_signs_any_key_and_we_agree(key):
    accept(sign("GET", "bucket/" + key, body=b""))


def test_query_parameters_are_canonicalised_like_botocore():
    req = sign("GET", "bucket", body=b"", query="list-type=2&prefix=a%20b%2Bc&delimiter=%2F&uploads&max-keys=10")
    accept(req)


def test_a_path_sent_with_other_legal_escapes_still_verifies():
    """A client that leaves '!' literal signs '%21'; the path as sent is decoded and encoded the AWS way."""
    req = sign("GET", body=b"", url_path="/bucket/bang%21")
    accept(type(req)(req.method, "http://h/bucket/bang!", req.headers, b""))


def test_the_target_may_be_bytes_or_latin1_text():
    """twisted.web gives bytes; a client may even send UTF-8 unescaped, and it signs the escaped form."""
    req = sign("GET", "bucket/ünï cødé", body=b"", query="prefix=%C3%A4")
    authenticate("GET", req.path.encode(), req.query.encode(), req.headers, lookup, time.time())
    raw_utf8 = "/bucket/ünï%20cødé".encode()
    authenticate("GET", raw_utf8, req.query.encode(), req.headers, lookup, time.time())
    authenticate("GET", raw_utf8.decode("latin-1"), req.query, req.headers, lookup, time.time())


def test_every_one_byte_change_is_refused():
    req = sign(body=b"payload", headers={"x-amz-meta-a": "one"}, query="partNumber=1&uploadId=abc")
    accept(req)

    def refused(method=req.method, path=req.path, query=req.query, headers=req.headers):
        with pytest.raises(S3Error) as info:
            authenticate(method, path, query, headers, lookup, time.time())
        return info.value.code

    assert refused(method="POST") == "SignatureDoesNotMatch"
    assert refused(path=req.path[:-1] + "X") == "SignatureDoesNotMatch"
    assert refused(query="partNumber=2&uploadId=abc") == "SignatureDoesNotMatch"
    assert refused(query=req.query + "&extra=1") == "SignatureDoesNotMatch"
    signed = dict(req.headers)["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    for name in signed:
        if name == "x-amz-date":
            continue  # a changed date changes the scope check or the string to sign: covered below
        changed = [(n, (v[:-1] + ("0" if v[-1] != "0" else "1")) if n == name else v) for n, v in req.headers]
        assert refused(headers=changed) in ("SignatureDoesNotMatch", "InvalidArgument"), name
    date = dict(req.headers)["x-amz-date"]
    later = date[:13] + ("00" if date[13:15] != "00" else "01") + "Z"
    assert refused(headers=req.replace_header("x-amz-date", later[:-1])) == "AuthorizationHeaderMalformed"
    assert refused(headers=req.replace_header("x-amz-date", later)) == "SignatureDoesNotMatch"
    auth_value = dict(req.headers)["authorization"]
    flipped = auth_value[:-1] + ("0" if auth_value[-1] != "0" else "1")
    assert refused(headers=req.replace_header("authorization", flipped)) == "SignatureDoesNotMatch"


def test_an_unsigned_header_may_change():
    req = sign(body=b"x")
    accept(type(req)(req.method, "http://h" + req.path, req.headers + [("user-agent", "anything")], b"x"))


def test_wrong_secret_and_unknown_key():
    assert code_of(lambda: accept(sign(secret="not the secret"))) == "SignatureDoesNotMatch"
    req = sign()
    assert code_of(lambda: authenticate(req.method, req.path, req.query, req.headers, lambda k: None,
                                        time.time())) == "InvalidAccessKeyId"


def test_fifteen_minutes_of_skew_each_way():
    req = sign()
    now = time.time()
    accept(req, now + 14 * 60)
    accept(req, now - 14 * 60)
    assert code_of(lambda: accept(req, now + 16 * 60)) == "RequestTimeTooSkewed"
    assert code_of(lambda: accept(req, now - 16 * 60)) == "RequestTimeTooSkewed"


def test_any_region_is_accepted_but_only_the_s3_service():
    assert accept(sign(region="garage-local-1")).region == "garage-local-1"
    req = sign()
    wrong = dict(req.headers)["authorization"].replace("/s3/aws4_request", "/ec2/aws4_request")
    assert code_of(lambda: authenticate(req.method, req.path, req.query, req.replace_header("authorization", wrong),
                                        lookup, time.time())) == "AuthorizationHeaderMalformed"


def test_the_credential_date_must_be_the_request_date():
    req = sign()
    auth_value = dict(req.headers)["authorization"]
    date = dict(req.headers)["x-amz-date"][:8]
    wrong = auth_value.replace(f"/{date}/", "/20000101/")
    assert code_of(lambda: authenticate(req.method, req.path, req.query, req.replace_header("authorization", wrong),
                                        lookup, time.time())) == "AuthorizationHeaderMalformed"


def test_anonymous_and_signature_v2_are_refused():
    assert code_of(lambda: authenticate("GET", "/b/k", "", [("host", "h")], lookup, time.time())) == "AccessDenied"
    assert code_of(lambda: authenticate("GET", "/b/k", "AWSAccessKeyId=x&Signature=y&Expires=1", [("host", "h")],
                                        lookup, time.time())) == "InvalidRequest"
    assert code_of(lambda: authenticate("GET", "/b/k", "", [("host", "h"), ("authorization", "AWS key:sig")],
                                        lookup, time.time())) == "InvalidRequest"


def test_missing_content_sha256_and_bad_values():
    req = sign()
    without = [(n, v) for n, v in req.headers if n != "x-amz-content-sha256"]
    assert code_of(lambda: authenticate(req.method, req.path, req.query, without, lookup, time.time())) \
        == "InvalidRequest"
    nonsense = req.replace_header("x-amz-content-sha256", "nonsense")
    assert code_of(lambda: authenticate(req.method, req.path, req.query, nonsense, lookup, time.time())) \
        == "InvalidArgument"


@pytest.mark.parametrize("mode,value", [(sigv4.UNSIGNED, "UNSIGNED-PAYLOAD"),
                                        (sigv4.STREAMING_SIGNED, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
                                        (sigv4.STREAMING_SIGNED_TRAILER, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
                                        (sigv4.STREAMING_UNSIGNED_TRAILER, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")])
def test_payload_modes(mode, value):
    headers = {}
    if mode in sigv4.STREAMING_MODES:
        headers["X-Amz-Decoded-Content-Length"] = "5"
    if mode in (sigv4.STREAMING_SIGNED_TRAILER, sigv4.STREAMING_UNSIGNED_TRAILER):
        headers["X-Amz-Trailer"] = "x-amz-checksum-crc32"
    auth = accept(sign(headers=headers, content_sha256=value))
    assert auth.payload == mode and auth.payload_sha256 == ""
    if mode in sigv4.STREAMING_MODES:
        assert auth.decoded_length == 5
    if "X-Amz-Trailer" in headers:
        assert auth.trailers == ("x-amz-checksum-crc32",)
    auth.body_check().finish()  # nothing to compare outside SIGNED


def test_streaming_needs_the_decoded_length():
    assert code_of(lambda: accept(sign(content_sha256="STREAMING-UNSIGNED-PAYLOAD-TRAILER"))) \
        == "MissingContentLength"


def test_botocore_presigned_urls_are_accepted_until_they_expire():
    req = sign("GET", "bucket/report 2024.pdf", body=b"", presign=3600, query="response-content-type=text%2Fplain")
    now = time.time()
    auth = accept(req, now)
    assert auth.presigned and auth.payload == sigv4.UNSIGNED
    accept(req, now + 3500)
    assert code_of(lambda: accept(req, now + 3700)) == "AccessDenied"
    put = sign("PUT", "bucket/up", body=b"", presign=60)
    accept(put)
    tampered = type(put)("GET", "http://h" + put.path + "?" + put.query, put.headers, b"")
    assert code_of(lambda: accept(tampered)) == "SignatureDoesNotMatch"
    other = put.query.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    assert code_of(lambda: authenticate("PUT", put.path, other, put.headers, lookup, time.time())) \
        == "SignatureDoesNotMatch"


def test_presign_expiry_bounds():
    accept(sign("GET", body=b"", presign=604800))
    assert code_of(lambda: accept(sign("GET", body=b"", presign=604801))) == "AuthorizationQueryParametersError"
    req = sign("GET", body=b"", presign=60)
    missing = "&".join(p for p in req.query.split("&") if not p.startswith("X-Amz-Credential"))
    assert code_of(lambda: authenticate("GET", req.path, missing, req.headers, lookup, time.time())) \
        == "AuthorizationQueryParametersError"


def test_both_mechanisms_at_once_is_refused():
    req = sign("GET", body=b"", presign=60)
    both = req.headers + [("authorization", "AWS4-HMAC-SHA256 Credential=x/20200101/r/s3/aws4_request, "
                                            "SignedHeaders=host, Signature=" + "0" * 64)]
    assert code_of(lambda: authenticate("GET", req.path, req.query, both, lookup, time.time())) == "InvalidArgument"


def test_signing_keys_are_cached_and_bounded():
    sigv4._signing_key.cache_clear()
    for _ in range(3):
        accept(sign())
    info = sigv4._signing_key.cache_info()
    assert info.hits >= 2 and info.maxsize == sigv4.SIGNING_KEY_CACHE


def test_the_date_header_may_stand_for_x_amz_date():
    """botocore signs with Date when the request already has one (SigV4 allows either)."""
    from email.utils import formatdate
    req = sign("GET", body=b"", headers={"Date": formatdate(usegmt=True)})
    assert "x-amz-date" not in dict(req.headers)
    accept(req)


@settings(max_examples=60, deadline=None)
@given(key=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40),
       value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
def test_property_botocore_signed_requests_verify(key, value):
    accept(sign("PUT", "bucket/" + key, body=value.encode(), query="tagging=" + quote(value[:5], safe="-_.~"),
                headers={"x-amz-meta-v": value} if value.strip() else None))


def test_a_real_boto3_client_request_verifies():
    """boto3 itself (current: default CRC32 checksums, aws-chunked over https) as the gateway would see it."""
    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    captured = []

    class Raw:
        def stream(self, **kwargs):
            yield b""

    def before_send(request, **kwargs):
        body = request.body
        data = body.read() if hasattr(body, "read") else (body or b"")
        captured.append((request.method, request.url, list(request.headers.items()), data))
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, Raw())

    for endpoint in ("https://127.0.0.1:9443", "http://127.0.0.1:9000"):
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}))
        client.meta.events.register("before-send", before_send)
        client.put_object(Bucket="bucket", Key="dir/a file+1.txt", Body=b"x" * 1000)
    from urllib.parse import urlsplit
    modes = []
    for method, url, headers, _data in captured:
        parts = urlsplit(url)
        host = parts.netloc
        wire = [(n.lower(), v if isinstance(v, str) else v.decode()) for n, v in headers]
        if "host" not in dict(wire):
            wire.append(("host", host))
        modes.append(authenticate(method, parts.path, parts.query, wire, lookup, time.time()).payload)
    assert modes[0] in sigv4.STREAMING_MODES and modes[1] in (sigv4.SIGNED, sigv4.STREAMING_UNSIGNED_TRAILER)


# -- a second, independent signer: awscrt's (aws-c-auth, in C) -------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(key=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=40),
       prefix=st.text(max_size=10))
def test_property_awscrt_signed_requests_verify(key, prefix):
    path = "/bucket/" + quote(key, safe="/~")
    raw_path, raw_query, headers = crt_sign("GET", path, "list-type=2&prefix=" + quote(prefix, safe="-_.~"))
    auth = authenticate("GET", raw_path, raw_query, headers, lookup, time.time())
    assert auth.region == "us-west-2" and auth.payload == sigv4.SIGNED


def test_awscrt_streaming_and_presigned_requests_verify():
    raw_path, raw_query, headers = crt_sign(
        "PUT", "/bucket/big", headers=(("x-amz-decoded-content-length", "10"), ("content-encoding", "aws-chunked")),
        body_value="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    auth = authenticate("PUT", raw_path, raw_query, headers, lookup, time.time())
    assert auth.payload == sigv4.STREAMING_SIGNED and auth.decoded_length == 10
    raw_path, raw_query, headers = crt_sign("GET", "/bucket/k%20x", presign=300)
    now = time.time()
    assert authenticate("GET", raw_path, raw_query, headers, lookup, now).presigned
    assert code_of(lambda: authenticate("GET", raw_path, raw_query, headers, lookup, now + 400)) == "AccessDenied"
    assert code_of(lambda: authenticate("GET", raw_path + "y", raw_query, headers, lookup, now)) \
        == "SignatureDoesNotMatch"


@settings(max_examples=300, deadline=None)
@given(auth_value=st.one_of(st.text(max_size=200), st.builds(
           lambda a, b, c: f"AWS4-HMAC-SHA256 Credential={a}, SignedHeaders={b}, Signature={c}",
           st.text(max_size=60), st.text(max_size=30), st.text(max_size=70))),
       query=st.text(max_size=80), date=st.text(max_size=20), path=st.text(max_size=30))
def test_property_junk_requests_get_s3_errors_only(auth_value, query, date, path):
    headers = [("host", "h"), ("x-amz-date", date), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]
    if auth_value:
        headers.append(("authorization", auth_value))
    with pytest.raises(S3Error) as info:
        authenticate("GET", path, query, headers, lookup, time.time())
    assert 400 <= info.value.status <= 501


@pytest.mark.parametrize("date", ["20130231T000000Z", "20131301T000000Z", "20130101T246000Z", "2013-01-01T00:00Z"])
def test_dates_that_are_not_real_times_are_malformed(date):
    req = sign()
    assert code_of(lambda: authenticate(req.method, req.path, req.query, req.replace_header("x-amz-date", date),
                                        lookup, time.time())) == "AuthorizationHeaderMalformed"


@pytest.mark.parametrize("presign", [None, 3600])
def test_an_unsigned_amz_header_is_refused(presign):
    """A presigned PUT (botocore signs only host) must not become a CopyObject by an added header."""
    req = sign("PUT", "uploads/drop.bin", body=b"", presign=presign) if presign else sign("PUT", "b/k", body=b"hi")
    added = [("x-amz-copy-source", "/secret/payroll.csv"), ("x-amz-metadata-directive", "REPLACE"),
             ("x-amz-meta-owner", "mallory")]
    with pytest.raises(S3Error) as caught:
        authenticate("PUT", req.path, req.query, req.headers + added, lookup, time.time())
    assert caught.value.code == "AccessDenied" and "not signed" in caught.value.message
    # As sent (and with a non-x-amz header added), the same request is accepted.
    authenticate("PUT", req.path, req.query, req.headers + [("user-agent", "curl")], lookup, time.time())
