"""An S3 endpoint that does nothing: the cheapest answer an S3 client can get, for s3_ceiling.py.

It speaks just enough HTTP/1.1 over TLS for boto3's PutObject and
GetObject of small objects: it reads each request's head and body
(``Content-Length`` or chunked), checks nothing (no signature, no
checksum), stores nothing, and answers a PUT with an ETag and a GET with
``--size`` fixed bytes.  Whatever rate boto3 reaches against it is the
most it could reach against any gateway on the same host, because a real
one can only cost more than this.  Not a server for anything else: run
only by the benchmark, on 127.0.0.1::

    python benchmarks/null_s3.py --port P --cert C --key K [--size 4096]

It prints ``ready`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ssl
import sys

_HEAD_LIMIT = 64 * 1024


def _answer(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)


def serve(port: int, cert: str, key: str, size: int) -> None:
    body = bytes(size)
    etag = '"' + hashlib.md5(body).hexdigest() + '"'  # noqa: S324 - S3's ETag is an MD5
    common = [("x-amz-request-id", "0"), ("Server", "null-s3")]
    got = _answer("200 OK", [*common, ("ETag", etag), ("Content-Type", "application/octet-stream"),
                             ("Last-Modified", "Thu, 03 Dec 2026 00:00:00 GMT")], body)
    put = _answer("200 OK", [*common, ("ETag", etag)])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > _HEAD_LIMIT:
                    return
                first, *rest = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in rest:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await _read_body(reader, headers)
                writer.write(got if first.startswith("GET ") else put)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context, backlog=256)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--size", type=int, default=4096)
    options = parser.parse_args()
    try:
        serve(options.port, options.cert, options.key, options.size)
    except KeyboardInterrupt:
        sys.exit(0)
