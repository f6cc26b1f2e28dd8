"""How a request's body is framed and what it must hash to, from its headers and signature.

- aws-chunked bodies (``Content-Encoding: aws-chunked``, the ``STREAMING-*``
  payload modes that boto3 and the aws CLI use over HTTPS) are unframed by
  :class:`storg.s3.chunked.AwsChunkedDecoder`, which checks each chunk's
  signature and the trailer's where the mode signs them;
- a signed payload (``x-amz-content-sha256: <hex>``) must hash to that value;
- ``Content-MD5`` must be the body's MD5;
- a checksum (``x-amz-checksum-<algo>`` in a header or, named by
  ``x-amz-trailer``, in the trailer) must be the body's; it is kept on the
  exchange (:attr:`S3Exchange.checksum`) for the operation to store.

A mismatch is S3's ``BadDigest`` (or ``XAmzContentSHA256Mismatch``), raised
before the operation commits anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from storg.s3 import checksums, sigv4
from storg.s3.chunked import AwsChunkedDecoder
from storg.s3.errors import S3Error

CHECKSUM_PREFIX = "x-amz-checksum-"


def install(ex: Any) -> None:
    """Set up ``ex``'s body decoding and checks; S3Error for contradictory or malformed headers."""
    auth = ex.auth
    trailer_names = [t.strip().lower() for t in ex.header("x-amz-trailer").split(",") if t.strip()]
    if auth.payload in sigv4.STREAMING_MODES:
        decoder = AwsChunkedDecoder(auth)
        ex.pump.decode = decoder.feed
        ex.pump.finish = decoder.end
    elif auth.payload == sigv4.SIGNED:
        checker = auth.body_check()
        ex.observe(checker)
        ex.check_at_end(lambda trailers: checker.finish())
    md5_header = ex.header("content-md5")
    if md5_header:
        try:
            wanted = base64.b64decode(md5_header, validate=True)
        except binascii.Error:
            raise S3Error("InvalidDigest", "Content-MD5 is not base64", 400) from None
        if len(wanted) != 16:
            raise S3Error("InvalidDigest", "Content-MD5 is not an MD5 (16 bytes)", 400)
        md5 = hashlib.md5(usedforsecurity=False)
        ex.observe(md5)

        def check_md5(trailers: dict[str, str]) -> None:
            if md5.digest() != wanted:
                raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", 400)
        ex.check_at_end(check_md5)
    algo, value, in_trailer = _checksum_named(ex, trailer_names)
    if algo:
        hasher = checksums.new(algo)
        ex.observe(hasher)
        header = checksums.header_name(algo)

        def check_sum(trailers: dict[str, str]) -> None:
            wanted_b64 = trailers.get(header, "") if in_trailer else value
            if not wanted_b64:
                raise S3Error("InvalidRequest", f"the trailer has no {header}", 400)
            got = hasher.b64()
            if got != wanted_b64:
                raise S3Error("BadDigest", f"The {algo} you specified did not match the calculated checksum.", 400)
            ex.checksum = (algo, got)
        ex.check_at_end(check_sum)


def _checksum_named(ex: Any, trailer_names: list[str]) -> tuple[str, str, bool]:
    """(ALGO, header value, whether it comes in the trailer); ("", "", False) when none is named."""
    found: list[tuple[str, str, bool]] = []
    for algo in checksums.ALGORITHMS:
        header = checksums.header_name(algo)
        if header in trailer_names:
            found.append((algo, "", True))
        elif ex.header(header):
            found.append((algo, ex.header(header), False))
    if len(found) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header.", 400)
    if found:
        return found[0]
    unknown = [n for n in trailer_names if n.startswith(CHECKSUM_PREFIX)]
    if unknown:
        raise S3Error("InvalidRequest", f"unsupported checksum {unknown[0]}", 400)
    return "", "", False
