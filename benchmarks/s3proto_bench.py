"""The S3 protocol layer's own costs (storg.s3, no node, no network), beside their baselines.

* ``authenticate``: a botocore-signed PUT (header auth, signed payload) per
  second, beside the bare HMAC-SHA256 + SHA-256 a signature check cannot
  avoid;
* ``AwsChunkedDecoder`` throughput over 64 MiB in 64 KiB chunks fed in
  256 KiB reads, unsigned (botocore's default trailer mode) and signed
  (chunk signatures: one SHA-256 of every byte), beside hashlib's SHA-256;
* every checksum algorithm over 64 MiB in 1 MiB updates.

Each figure is the median over ``--repeats`` rounds::

    python benchmarks/s3proto_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from storg.s3 import checksums, sigv4
from storg.s3.chunked import AwsChunkedDecoder

KEY, SECRET = "AKIDBENCH", "bench-secret"
MIB = 1 << 20


def signed_request() -> tuple[str, str, list[tuple[str, str]]]:
    request = AWSRequest(method="PUT", url="http://127.0.0.1:9000/bucket/dir/some%20key.txt", data=b"x" * 100,
                         headers={"Content-Type": "text/plain"})
    S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    headers = [("host", "127.0.0.1:9000")] + [(n.lower(), v if isinstance(v, str) else v.decode())
                                              for n, v in prepared.headers.items()]
    return "/bucket/dir/some%20key.txt", "", headers


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def chunk_auth(mode: str, size: int) -> sigv4.Auth:
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return sigv4.Auth(access_key=KEY, payload=mode, payload_sha256="",
                      signing_key=sigv4.signing_key(SECRET, date[:8], "us-east-1"),
                      scope=f"{date[:8]}/us-east-1/s3/aws4_request", amz_date=date, seed_signature="0" * 64,
                      region="us-east-1", presigned=False, signed_headers=("host",), decoded_length=size)


def chunked_body(auth: sigv4.Auth, payload: bytes, chunk: int) -> bytes:
    """aws-chunked framing of ``payload`` (signed when ``auth`` says so), as a client would send it."""
    signed = auth.payload == sigv4.STREAMING_SIGNED
    previous, out = auth.seed_signature, []
    for start in [*range(0, len(payload), chunk), len(payload)]:
        piece = payload[start:start + chunk]
        extension = b""
        if signed:
            previous = auth.sign("\n".join(("AWS4-HMAC-SHA256-PAYLOAD", auth.amz_date, auth.scope, previous,
                                            sigv4.EMPTY_SHA256, hashlib.sha256(piece).hexdigest())))
            extension = b";chunk-signature=" + previous.encode()
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
    return b"".join(out)


def decode_mb_s(auth: sigv4.Auth, body: bytes, size: int) -> float:
    start = time.perf_counter()
    decoder = AwsChunkedDecoder(auth, ())
    total = 0
    for at in range(0, len(body), 256 * 1024):
        total += sum(len(piece) for piece in decoder.feed(body[at:at + 256 * 1024]))
    decoder.end()
    assert total == size
    return size / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path, query, headers = signed_request()

    def check() -> None:
        sigv4.authenticate("PUT", path, query, headers, lambda k: SECRET, time.time())

    key = sigv4.signing_key(SECRET, "20240101", "us-east-1")

    def floor() -> None:
        hmac.new(key, hashlib.sha256(b"x" * 400).hexdigest().encode(), hashlib.sha256).hexdigest()

    rows: dict[str, list[float]] = {}
    size = 64 * MIB
    payload = b"\x5a" * size
    bodies = {mode: (chunk_auth(mode, size), chunked_body(chunk_auth(mode, size), payload, 64 * 1024))
              for mode in (sigv4.STREAMING_UNSIGNED_TRAILER, sigv4.STREAMING_SIGNED)}
    for _ in range(args.repeats):
        rows.setdefault("authenticate, requests/s", []).append(rate(check, 5000))
        rows.setdefault("  baseline: one HMAC + one SHA-256, /s", []).append(rate(floor, 5000))
        for mode, (auth, body) in bodies.items():
            rows.setdefault(f"aws-chunked {mode}, MB/s", []).append(decode_mb_s(auth, body, size))
        start = time.perf_counter()
        hashlib.sha256(payload).digest()
        rows.setdefault("  baseline: hashlib SHA-256, MB/s", []).append(size / (time.perf_counter() - start) / 1e6)
        view = memoryview(payload)
        for algorithm in checksums.ALGORITHMS:
            running = checksums.new(algorithm)
            start = time.perf_counter()
            for at in range(0, size, MIB):
                running.update(view[at:at + MIB])
            rows.setdefault(f"checksum {algorithm}, MB/s", []).append(size / (time.perf_counter() - start) / 1e6)
    for name, values in rows.items():
        print(f"{name:48s} {statistics.median(values):12,.0f}")


if __name__ == "__main__":
    main()
