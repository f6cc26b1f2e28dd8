"""The ``aws-chunked`` body decoder: bytes in, payload pieces out, bounded.

The body of a streaming upload (``x-amz-content-sha256: STREAMING-...``)
is a run of chunks, each ``hex-size[;chunk-signature=SIG]\\r\\n`` then that
many bytes then ``\\r\\n``, ended by a chunk of size 0, then (``-TRAILER``
modes) trailer lines such as ``x-amz-checksum-crc32:AAAAAA==\\r\\n`` and,
when signed, ``x-amz-trailer-signature:SIG\\r\\n``, then an empty line.

Chunk signatures chain from the request's seed signature: each signs
``AWS4-HMAC-SHA256-PAYLOAD``, the date, the scope, the previous signature,
the SHA-256 of nothing and the SHA-256 of the chunk.  The trailer
signature signs ``AWS4-HMAC-SHA256-TRAILER``, the date, the scope, the last
chunk's signature and the SHA-256 of the trailer lines (``name:value\\n``
each).  ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` has neither.

Bounded: the decoder holds at most one header or trailer line
(:data:`MAX_LINE` bytes) and refuses chunks above :data:`MAX_CHUNK`; chunk
data is handed on as it arrives and hashed on the way, never collected.
So a chunk's bytes are returned *before* its signature is checked (at the
chunk's end): the caller must treat everything as provisional until
:meth:`AwsChunkedDecoder.end` returns, and commit nothing before (a
PutStream is aborted on any S3Error).

What clients really send, all accepted: botocore's unsigned trailer
(``0\\r\\nx-amz-checksum-crc32:...\\r\\n\\r\\n``); the SDKs' signed trailer
(``0;chunk-signature=S\\r\\n`` then the trailer lines); AWS's documented
example, which puts an empty line between the last chunk and the trailer
lines; and a body whose final empty line is missing at the end of the
stream (the trailer lines complete).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from storg.s3.errors import S3Error, incomplete_body
from storg.s3.sigv4 import (
    EMPTY_SHA256,
    STREAMING_MODES,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    Auth,
)

MAX_LINE = 4096
"""The longest chunk header or trailer line (a signed header is about 85 bytes)."""
MAX_CHUNK = 16 * 1024 * 1024
"""The largest chunk accepted (clients use 64 KiB to 1 MiB; S3's minimum is 8 KiB)."""
MAX_TRAILERS = 16
TRAILER_SIGNATURE = "x-amz-trailer-signature"

_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


def _malformed(message: str, code: str = "InvalidRequest") -> S3Error:
    return S3Error(code, f"The aws-chunked body is malformed: {message}", 400)


def _trailer_error(message: str) -> S3Error:
    return S3Error("MalformedTrailerError", f"The request contained trailing data that was not well-formed: "
                   f"{message}", 400)


class AwsChunkedDecoder:
    """Feed the raw body with :meth:`feed`, get payload pieces; :meth:`end` at the end of the body.

    ``declared_trailers`` are the names ``x-amz-trailer`` announced (by
    default the ones ``auth`` parsed); a trailer not announced, or one
    announced and not sent, is refused.  ``decoded_length`` defaults to
    ``auth.decoded_length`` (``x-amz-decoded-content-length``): a payload
    of any other length is refused, a longer one as soon as it shows.
    """

    def __init__(self, auth: Auth, declared_trailers: Iterable[str] | None = None, *,
                 decoded_length: int | None = None, max_chunk: int = MAX_CHUNK) -> None:
        if auth.payload not in STREAMING_MODES:
            raise ValueError(f"payload mode {auth.payload} is not aws-chunked")
        self._auth = auth
        self._signed = auth.payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._trailer_mode = auth.payload in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
        names = auth.trailers if declared_trailers is None else declared_trailers
        self._declared = tuple(name.strip().lower() for name in names if name.strip())
        self._expected = auth.decoded_length if decoded_length is None else decoded_length
        self._max_chunk = max_chunk
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0
        self._chunk_signature = ""
        self._chunk_hash = hashlib.sha256()
        self._previous = auth.seed_signature
        self._final = False
        self._decoded = 0
        self._trailers: dict[str, str] = {}
        self._trailer_order: list[tuple[str, str]] = []
        self._trailer_signature = ""
        self._blank_skipped = False
        self._failed: S3Error | None = None

    @property
    def decoded(self) -> int:
        """Payload bytes the chunk headers so far announced (returned, or about to be)."""
        return self._decoded

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """The payload pieces in ``data`` (possibly none); S3Error on anything wrong, then always."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(memoryview(data))
        except S3Error as err:
            self._failed = err
            raise

    def end(self) -> dict[str, str]:
        """The body is over: check that it was whole; the trailer headers (lower-case names)."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._end()
        except S3Error as err:
            self._failed = err
            raise

    # -- the state machine --------------------------------------------------------------------------------------------

    def _feed(self, view: memoryview) -> list[bytes]:
        out: list[bytes] = []
        pos, size = 0, len(view)
        while pos < size:
            if self._state == _DATA:
                take = min(self._remaining, size - pos)
                piece = view[pos:pos + take]
                if self._signed:
                    self._chunk_hash.update(piece)
                out.append(bytes(piece))
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = _DATA_END
            elif self._state == _DONE:
                raise _malformed("bytes follow the end of the body")
            else:
                line, pos = self._take_line(view, pos)
                if line is None:
                    break
                if self._state == _HEADER:
                    self._header(line)
                elif self._state == _DATA_END:
                    if line:
                        raise _malformed("a chunk's data is longer than its size")
                    self._chunk_done()
                else:
                    self._trailer_line(line)
        return out

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        """The next whole line (without CRLF) from the held bytes and ``view``, or None: more needed."""
        limit = MAX_LINE + 2 - len(self._line)
        window = view[pos:pos + limit]
        index = bytes(window).find(b"\n")
        if index < 0:
            self._line += window
            if len(self._line) > MAX_LINE + 1:
                raise _malformed(f"a chunk header or trailer line is longer than {MAX_LINE} bytes")
            return None, pos + len(window)
        self._line += window[:index + 1]
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n"):
            raise _malformed("a line does not end with CRLF")
        return line[:-2], pos + index + 1

    def _header(self, line: bytes) -> None:
        size_text, _, extensions = line.partition(b";")
        if not _SIZE.fullmatch(size_text):
            raise _malformed(f"the chunk size {size_text[:40]!r} is not hexadecimal")
        size = int(size_text, 16)
        if size > self._max_chunk:
            raise _malformed(f"a chunk of {size} bytes is larger than the {self._max_chunk} accepted")
        if self._expected is not None and self._decoded + size > self._expected:
            raise _malformed(f"the chunks carry more than the {self._expected} bytes of "
                             "x-amz-decoded-content-length")
        if self._signed:
            name, eq, signature = extensions.partition(b"=")
            text = signature.decode("ascii", "replace")
            if name != b"chunk-signature" or not eq or not _HEX64.fullmatch(text):
                raise _malformed("a chunk header lacks its chunk-signature")
            self._chunk_signature = text
            self._chunk_hash = hashlib.sha256()
        self._decoded += size
        self._remaining = size
        self._final = size == 0
        if self._final:
            self._check_chunk_signature()
            self._state = _TRAILER if self._trailer_mode else _DATA_END
        else:
            self._state = _DATA

    def _chunk_done(self) -> None:
        if self._final:
            self._state = _DONE
            return
        self._check_chunk_signature()
        self._state = _HEADER

    def _check_chunk_signature(self) -> None:
        if not self._signed:
            return
        auth = self._auth
        sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", auth.amz_date, auth.scope, self._previous, EMPTY_SHA256,
                         self._chunk_hash.hexdigest()))
        if not hmac.compare_digest(auth.sign(sts).encode(), self._chunk_signature.encode()):
            raise S3Error("SignatureDoesNotMatch", "The chunk signature we calculated does not match the "
                          "chunk-signature you provided.", 403)
        self._previous = self._chunk_signature

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            if not self._trailer_order and not self._trailer_signature and self._declared \
                    and not self._blank_skipped:
                self._blank_skipped = True  # AWS's documented layout: a blank line before the trailers
                return
            self._finish_trailers()
            self._state = _DONE
            return
        if self._trailer_signature:
            raise _trailer_error("a line follows x-amz-trailer-signature")
        if len(self._trailer_order) >= MAX_TRAILERS:
            raise _trailer_error(f"more than {MAX_TRAILERS} trailer lines")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise _trailer_error("a trailer line is not ASCII") from None
        name, colon, value = text.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not colon or not name:
            raise _trailer_error(f"{text[:60]!r} is not name:value")
        if name == TRAILER_SIGNATURE:
            self._trailer_signature = value
            return
        if name not in self._declared:
            raise _trailer_error(f"the trailer {name} was not declared in x-amz-trailer")
        if name in self._trailers:
            raise _trailer_error(f"the trailer {name} is repeated")
        self._trailers[name] = value
        self._trailer_order.append((name, value))

    def _finish_trailers(self) -> None:
        missing = [name for name in self._declared if name not in self._trailers]
        if missing:
            raise _trailer_error(f"the declared trailer {', '.join(missing)} was not sent")
        if self._auth.payload != STREAMING_SIGNED_TRAILER:
            return  # unsigned trailers: a stray x-amz-trailer-signature is ignored, there is nothing to check
        if not _HEX64.fullmatch(self._trailer_signature):
            raise _trailer_error("the x-amz-trailer-signature line is missing or not 64 hex digits")
        canonical = "".join(f"{name}:{value}\n" for name, value in self._trailer_order)
        auth = self._auth
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", auth.amz_date, auth.scope, self._previous,
                         hashlib.sha256(canonical.encode()).hexdigest()))
        if not hmac.compare_digest(auth.sign(sts).encode(), self._trailer_signature.encode()):
            raise S3Error("SignatureDoesNotMatch", "The trailer signature we calculated does not match the "
                          "x-amz-trailer-signature you provided.", 403)

    def _end(self) -> dict[str, str]:
        if self._state == _TRAILER:
            if self._line:
                held = bytes(self._line)
                self._line.clear()
                if held.endswith(b"\r"):
                    held = held[:-1]
                if held:
                    self._trailer_line(held)  # the last trailer line, its CRLF missing
            self._finish_trailers()
            self._state = _DONE
        elif self._state == _DATA_END and self._final and not self._line:
            self._state = _DONE  # "0;chunk-signature=...\r\n" and the stream ends: nothing is missing
        if self._state != _DONE:
            raise _malformed("the body ended inside a chunk" if self._state == _DATA
                             else "the body ended before its final chunk", "IncompleteBody")
        if self._expected is not None and self._decoded != self._expected:
            raise incomplete_body(f"The aws-chunked body carried {self._decoded} bytes, not the "
                                  f"{self._expected} of x-amz-decoded-content-length")
        return dict(self._trailers)


def stored_content_encoding(value: str) -> str:
    """``Content-Encoding`` as stored for the object: without ``aws-chunked`` (S3 drops it too)."""
    kept = [part.strip() for part in value.split(",") if part.strip() and part.strip().lower() != "aws-chunked"]
    return ", ".join(kept)

