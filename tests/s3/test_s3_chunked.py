"""aws-chunked: AWS's two worked examples, botocore's encoder, real boto3 bodies, bounds, any split."""

from __future__ import annotations

import hashlib
import hmac
import io
import time

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha256Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.s3 import checksums, chunked, sigv4
from storg.s3.chunked import AwsChunkedDecoder, stored_content_encoding
from storg.s3.errors import S3Error
from storg.s3.sigv4 import Auth, authenticate

from tests.s3.signing import ACCESS_KEY, SECRET, lookup
from tests.s3.test_s3_sigv4 import AWS_NOW, aws_chunked_headers, aws_lookup

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_CHUNKS = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n" + b"a" * 65536
    + b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n" + b"a" * 1024
    + b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n")
# AWS's trailing-header example (sigv4-streaming-trailers): same payload, its own seed, a CRC32C trailer.
AWS_TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
AWS_TRAILER_BODY = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n" + b"a" * 65536
    + b"\r\n400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n" + b"a" * 1024
    + b"\r\n0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n\r\n"
    + b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    + b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n")


def aws_auth():
    return authenticate("PUT", "/examplebucket/chunkObject.txt", "", aws_chunked_headers(), aws_lookup, AWS_NOW)


def make_auth(mode, *, seed="0" * 64, trailers=(), decoded_length=None, secret=SECRET, date="20130524T000000Z"):
    scope = f"{date[:8]}/us-east-1/s3/aws4_request"
    return Auth(access_key=ACCESS_KEY, payload=mode, payload_sha256="",
                signing_key=sigv4.signing_key(secret, date[:8], "us-east-1"), scope=scope, amz_date=date,
                seed_signature=seed, region="us-east-1", presigned=False, signed_headers=("host",),
                decoded_length=decoded_length, trailers=tuple(trailers))


def decode(decoder, body, splits=None):
    out = []
    if splits is None:
        out += decoder.feed(body)
    else:
        pos = 0
        for cut in sorted(splits) + [len(body)]:
            out += decoder.feed(body[pos:cut])
            pos = cut
    return b"".join(out), decoder.end()


def refused(decoder, body) -> str:
    with pytest.raises(S3Error) as info:
        decoder.feed(body)
        decoder.end()
    return info.value.code


def test_aws_chunked_example_decodes_and_every_signature_checks():
    payload, trailers = decode(AwsChunkedDecoder(aws_auth(), ()), AWS_CHUNKS)
    assert payload == b"a" * 66560 and trailers == {}


@pytest.mark.parametrize("offset", [200, 65536 + 90 + 100, len(AWS_CHUNKS) - 10])
def test_aws_chunked_example_with_one_byte_changed_is_refused(offset):
    body = bytearray(AWS_CHUNKS)
    body[offset] = body[offset] ^ 1
    assert refused(AwsChunkedDecoder(aws_auth(), ()), bytes(body)) in ("SignatureDoesNotMatch", "InvalidRequest")


def test_aws_chunked_example_with_chunks_reordered_or_dropped_is_refused():
    first_end = AWS_CHUNKS.index(b"400;")
    second_end = AWS_CHUNKS.index(b"0;chunk")
    swapped = AWS_CHUNKS[first_end:second_end] + AWS_CHUNKS[:first_end] + AWS_CHUNKS[second_end:]
    assert refused(AwsChunkedDecoder(aws_auth(), ()), swapped) == "SignatureDoesNotMatch"
    dropped = AWS_CHUNKS[:first_end] + AWS_CHUNKS[second_end:]
    assert refused(AwsChunkedDecoder(aws_auth(), ()), dropped) == "SignatureDoesNotMatch"


def test_aws_trailer_example_decodes_with_its_signed_crc32c():
    auth = make_auth(sigv4.STREAMING_SIGNED_TRAILER, seed=AWS_TRAILER_SEED, trailers=("x-amz-checksum-crc32c",),
                     decoded_length=66560, secret=AWS_SECRET)
    payload, trailers = decode(AwsChunkedDecoder(auth, auth.trailers), AWS_TRAILER_BODY)
    assert payload == b"a" * 66560
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert checksums.checksum_of("CRC32C", payload) == "sOO8/Q=="
    tampered = AWS_TRAILER_BODY.replace(b"sOO8/Q==", b"sOO8/Q=A")
    assert refused(AwsChunkedDecoder(auth, auth.trailers), tampered) == "SignatureDoesNotMatch"


def test_the_trailer_without_its_final_crlf_or_blank_line_still_decodes():
    auth = make_auth(sigv4.STREAMING_SIGNED_TRAILER, seed=AWS_TRAILER_SEED, trailers=("x-amz-checksum-crc32c",),
                     decoded_length=66560, secret=AWS_SECRET)
    sdk_layout = AWS_TRAILER_BODY.replace(b"f992\r\n\r\nx-amz", b"f992\r\nx-amz")
    assert decode(AwsChunkedDecoder(auth, None), sdk_layout)[1] == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert decode(AwsChunkedDecoder(auth, None), AWS_TRAILER_BODY[:-4])[1] == {"x-amz-checksum-crc32c": "sOO8/Q=="}


# -- an encoder for the tests, pinned to AWS's examples below ------------------------------------------------------

def encode_signed(auth, payload, sizes, trailers=()):
    def sig(sts):
        return hmac.new(auth.signing_key, sts.encode(), hashlib.sha256).hexdigest()
    previous = auth.seed_signature
    out = []
    pos = 0
    pieces = []
    for size in sizes:
        pieces.append(payload[pos:pos + size])
        pos += size
    if pos < len(payload):
        pieces.append(payload[pos:])
    for piece in [p for p in pieces if p] + [b""]:
        previous = sig("\n".join(("AWS4-HMAC-SHA256-PAYLOAD", auth.amz_date, auth.scope, previous,
                                  sigv4.EMPTY_SHA256, hashlib.sha256(piece).hexdigest())))
        out.append(b"%x;chunk-signature=%s\r\n" % (len(piece), previous.encode()))
        if piece or not trailers:
            out.append(piece + b"\r\n")
    if trailers:
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
        out.extend(f"{n}:{v}\r\n".encode() for n, v in trailers)
        tsig = sig("\n".join(("AWS4-HMAC-SHA256-TRAILER", auth.amz_date, auth.scope, previous,
                              hashlib.sha256(canonical.encode()).hexdigest())))
        out.append(f"x-amz-trailer-signature:{tsig}\r\n\r\n".encode())
    return b"".join(out)


def test_the_test_encoder_reproduces_aws_examples():
    assert encode_signed(aws_auth(), b"a" * 66560, [65536]) == AWS_CHUNKS
    auth = make_auth(sigv4.STREAMING_SIGNED_TRAILER, seed=AWS_TRAILER_SEED, secret=AWS_SECRET)
    sdk_layout = AWS_TRAILER_BODY.replace(b"f992\r\n\r\nx-amz", b"f992\r\nx-amz")
    assert encode_signed(auth, b"a" * 66560, [65536], [("x-amz-checksum-crc32c", "sOO8/Q==")]) == sdk_layout


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(max_size=3000), sizes=st.lists(st.integers(1, 700), max_size=8),
       splits=st.lists(st.integers(0, 6000), max_size=12), trailer=st.booleans())
def test_property_any_chunking_and_any_split_decodes_to_the_payload(payload, sizes, splits, trailer):
    mode = sigv4.STREAMING_SIGNED_TRAILER if trailer else sigv4.STREAMING_SIGNED
    names = ("x-amz-checksum-sha256",) if trailer else ()
    auth = make_auth(mode, seed="1" * 64, trailers=names, decoded_length=len(payload))
    value = checksums.checksum_of("SHA256", payload)
    body = encode_signed(auth, payload, sizes, [(names[0], value)] if trailer else ())
    got, trailers = decode(AwsChunkedDecoder(auth, names), body, [s for s in splits if s <= len(body)])
    assert got == payload
    assert trailers == ({names[0]: value} if trailer else {})


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=5000), chunk=st.integers(1, 2000), splits=st.lists(st.integers(0, 6000),
                                                                                     max_size=10))
def test_property_botocore_aws_chunked_wrapper_decodes(payload, chunk, splits):
    """botocore's own encoder (the unsigned-trailer body boto3 sends with its default CRC32)."""
    wrapper = AwsChunkedWrapper(io.BytesIO(payload), checksum_cls=Crc32Checksum,
                                checksum_name="x-amz-checksum-crc32", chunk_size=chunk)
    body = wrapper.read()
    auth = make_auth(sigv4.STREAMING_UNSIGNED_TRAILER, trailers=("x-amz-checksum-crc32",),
                     decoded_length=len(payload))
    got, trailers = decode(AwsChunkedDecoder(auth, auth.trailers), body, [s for s in splits if s <= len(body)])
    assert got == payload
    assert trailers == {"x-amz-checksum-crc32": checksums.checksum_of("CRC32", payload)}


def test_botocore_sha256_trailer_and_no_trailer():
    payload = b"z" * 100_000
    body = AwsChunkedWrapper(io.BytesIO(payload), Sha256Checksum, "x-amz-checksum-sha256").read()
    auth = make_auth(sigv4.STREAMING_UNSIGNED_TRAILER, trailers=("x-amz-checksum-sha256",), decoded_length=100_000)
    assert decode(AwsChunkedDecoder(auth, None), body)[1]["x-amz-checksum-sha256"] == \
        checksums.checksum_of("SHA256", payload)
    plain = AwsChunkedWrapper(io.BytesIO(payload)).read()
    bare = make_auth(sigv4.STREAMING_UNSIGNED_TRAILER, decoded_length=100_000)
    assert decode(AwsChunkedDecoder(bare, ()), plain) == (payload, {})


def test_a_real_boto3_upload_body_decodes():
    """put_object over https from boto3 itself: the body, headers and all, as the gateway gets them."""
    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    seen = []

    class Raw:
        def stream(self, **kwargs):
            yield b""

    def before_send(request, **kwargs):
        body = request.body
        seen.append((request.method, request.url, list(request.headers.items()),
                     body.read() if hasattr(body, "read") else body))
        return AWSResponse(request.url, 200, {"ETag": '"x"'}, Raw())

    client = boto3.client("s3", endpoint_url="https://127.0.0.1:9443", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET, region_name="eu-central-1",
                          config=Config(s3={"addressing_style": "path"}))
    client.meta.events.register("before-send", before_send)
    payload = bytes(range(256)) * 4000
    client.put_object(Bucket="bucket", Key="k", Body=payload)
    method, url, headers, body = seen[0]
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    wire = [(n.lower(), v if isinstance(v, str) else v.decode()) for n, v in headers]
    auth = authenticate(method, parts.path, parts.query, wire, lookup, time.time())
    assert auth.payload in sigv4.STREAMING_MODES
    got, trailers = decode(AwsChunkedDecoder(auth, None), body, list(range(0, len(body), 777)))
    assert got == payload
    (name, value), = trailers.items()
    assert value == checksums.checksum_of(checksums.algorithm_of_header(name), payload)


# -- bounds and malformed bodies ---------------------------------------------------------------------------------

def unsigned(n=None, trailers=()):
    return AwsChunkedDecoder(make_auth(sigv4.STREAMING_UNSIGNED_TRAILER, trailers=trailers, decoded_length=n))


def test_a_header_line_is_capped_and_never_buffered_past_the_cap():
    decoder = unsigned()
    decoder.feed(b"1" * 2000)
    with pytest.raises(S3Error):
        decoder.feed(b"1" * 5000)
    assert len(decoder._line) <= chunked.MAX_LINE + 2
    with pytest.raises(S3Error):
        decoder.feed(b"\r\n")  # a failed decoder stays failed


def test_chunk_size_cap():
    assert refused(unsigned(), b"%x\r\n" % (chunked.MAX_CHUNK + 1)) == "InvalidRequest"
    assert refused(unsigned(), b"ffffffffffffffffff\r\n") == "InvalidRequest"


def test_decoded_length_must_match():
    assert refused(unsigned(3), b"4\r\nabcd\r\n0\r\n\r\n") == "InvalidRequest"
    assert refused(unsigned(5), b"4\r\nabcd\r\n0\r\n\r\n") == "IncompleteBody"
    assert decode(unsigned(4), b"4\r\nabcd\r\n0\r\n\r\n") == (b"abcd", {})


@pytest.mark.parametrize("body", [b"4\r\nab", b"4\r\nabcd\r\n", b"4\r\nabcd", b"", b"zz\r\n", b"4\r\nabcdX\r\n",
                                  b"4\nabcd\r\n0\r\n\r\n", b"4\r\nabcd\r\n0\r\n\r\nmore"])
def test_malformed_and_truncated_bodies(body):
    assert refused(unsigned(), body) in ("InvalidRequest", "IncompleteBody")


def test_trailers_must_be_declared_and_sent():
    assert refused(unsigned(1), b"1\r\na\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n") == "MalformedTrailerError"
    declared = ("x-amz-checksum-crc32",)
    assert refused(unsigned(1, declared), b"1\r\na\r\n0\r\n\r\n") == "MalformedTrailerError"
    assert decode(unsigned(1, declared), b"1\r\na\r\n0\r\nx-amz-checksum-crc32:6L0=\r\n\r\n")[1] == \
        {"x-amz-checksum-crc32": "6L0="}


def test_signed_chunks_need_signatures():
    auth = make_auth(sigv4.STREAMING_SIGNED, seed="2" * 64, decoded_length=1)
    assert refused(AwsChunkedDecoder(auth, ()), b"1\r\na\r\n0\r\n\r\n") == "InvalidRequest"
    good = encode_signed(auth, b"a", [1])
    assert decode(AwsChunkedDecoder(auth, ()), good) == (b"a", {})
    other_seed = make_auth(sigv4.STREAMING_SIGNED, seed="3" * 64, decoded_length=1)
    assert refused(AwsChunkedDecoder(other_seed, ()), good) == "SignatureDoesNotMatch"


def test_a_signed_trailer_needs_its_signature():
    auth = make_auth(sigv4.STREAMING_SIGNED_TRAILER, seed="4" * 64, trailers=("x-amz-checksum-crc32",),
                     decoded_length=1)
    body = encode_signed(auth, b"a", [1], [("x-amz-checksum-crc32", "6L0=")])
    assert decode(AwsChunkedDecoder(auth, None), body)[1] == {"x-amz-checksum-crc32": "6L0="}
    unsigned_trailer = body[:body.index(b"x-amz-trailer-signature")] + b"\r\n"
    assert refused(AwsChunkedDecoder(auth, None), unsigned_trailer) == "MalformedTrailerError"


def test_memory_stays_bounded_over_a_large_body():
    """64 MiB through the decoder in 1 MiB chunks: it holds no more than a line between feeds."""
    auth = make_auth(sigv4.STREAMING_UNSIGNED_TRAILER, decoded_length=64 << 20)
    decoder = AwsChunkedDecoder(auth, ())
    block = b"\x07" * (1 << 20)
    total = 0
    for _ in range(64):
        for piece in decoder.feed(b"100000\r\n" + block + b"\r\n"):
            total += len(piece)
        assert len(decoder._line) == 0
    decoder.feed(b"0\r\n\r\n")
    decoder.end()
    assert total == 64 << 20


def test_content_encoding_drops_aws_chunked():
    assert stored_content_encoding("aws-chunked") == ""
    assert stored_content_encoding("aws-chunked, gzip") == "gzip"
    assert stored_content_encoding("gzip") == "gzip"


def test_only_streaming_modes_have_a_decoder():
    with pytest.raises(ValueError):
        AwsChunkedDecoder(make_auth(sigv4.UNSIGNED))



@settings(max_examples=300, deadline=None)
@given(payload=st.binary(min_size=1, max_size=600), sizes=st.lists(st.integers(1, 200), max_size=4),
       edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from(["set", "del", "ins"])),
                      min_size=1, max_size=3))
def test_property_a_mangled_signed_body_is_refused_cleanly_or_decodes_unchanged(payload, sizes, edits):
    """Hostile bytes: only S3Error ever comes out, and nothing but the signed payload gets through."""
    auth = make_auth(sigv4.STREAMING_SIGNED_TRAILER, seed="5" * 64, trailers=("x-amz-checksum-crc32",),
                     decoded_length=len(payload))
    value = checksums.checksum_of("CRC32", payload)
    body = bytearray(encode_signed(auth, payload, sizes, [("x-amz-checksum-crc32", value)]))
    for at, byte, how in edits:
        at %= len(body) + 1
        if how == "set" and at < len(body):
            body[at] = byte
        elif how == "del" and at < len(body):
            del body[at]
        else:
            body.insert(at, byte)
    decoder = AwsChunkedDecoder(auth, None)
    try:
        got, trailers = decode(decoder, bytes(body))
    except S3Error as err:
        assert err.status in (400, 403)
        return
    assert got == payload and trailers == {"x-amz-checksum-crc32": value}
