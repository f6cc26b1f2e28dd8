"""AWS Signature Version 4 for S3: the ``Authorization`` header and presigned URLs.

:func:`authenticate` takes the request as it arrived (method, raw path and
raw query as sent, the header list) and either returns an :class:`Auth`
or raises :class:`~storg.s3.errors.S3Error` with the code AWS would send.
It never reads the body: for a signed payload the caller feeds the body to
:meth:`Auth.body_check`; for ``aws-chunked`` bodies the
:class:`~storg.s3.chunked.AwsChunkedDecoder` checks each chunk with what
``Auth`` carries (signing key, scope, date, seed signature).

What S3 does, and so what this does (checked against botocore's signer):

* the canonical URI is the path as the client encoded it, once: S3 neither
  normalises it (``//``, ``.``) nor encodes it twice.  The path received is
  decoded and encoded again the AWS way, and when that differs from what
  was sent (a client that leaves ``!`` literal) the path exactly as sent
  is tried too: both name the same key, so accepting either signs the same
  resource;
* the canonical query sorts the AWS-encoded names, then values, and leaves
  out ``X-Amz-Signature`` for presigned URLs;
* the headers listed in ``SignedHeaders`` (``host`` must be one), values
  trimmed and inner runs of white space collapsed, repeated headers joined
  with ``,``;
* ``x-amz-content-sha256`` decides the payload mode; presigned URLs are
  ``UNSIGNED-PAYLOAD``; ``X-Amz-Expires`` is 1..604800 s;
* header auth allows 15 minutes of clock skew either way; the credential
  scope's date must be the request date's; the region is whatever the
  client signed with (any string), the service must be ``s3``;
* every comparison of secrets is :func:`hmac.compare_digest`; derived
  signing keys are cached (bounded LRU: one HMAC chain per key per day
  instead of four HMACs on every request).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from storg.s3.errors import S3Error, access_denied, invalid_argument, invalid_request
from storg.s3.uri import canonical_path, canonical_query, parse_query, wire_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"

# Payload modes (Auth.payload).
SIGNED = "SIGNED"
UNSIGNED = "UNSIGNED"
STREAMING_SIGNED = "STREAMING_SIGNED"
STREAMING_SIGNED_TRAILER = "STREAMING_SIGNED_TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING_UNSIGNED_TRAILER"
STREAMING_MODES = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
"""The modes whose body is ``aws-chunked`` (decode it with AwsChunkedDecoder)."""

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_CONTENT_MODES = {
    UNSIGNED_PAYLOAD: UNSIGNED,
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": STREAMING_SIGNED,
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": STREAMING_SIGNED_TRAILER,
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER": STREAMING_UNSIGNED_TRAILER,
}
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MAX_SKEW_S = 15 * 60
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
SIGNING_KEY_CACHE = 1024
"""Derived keys kept (access keys x days x regions in use): a few hundred KiB at most."""

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                   "X-Amz-SignedHeaders", "X-Amz-Signature")


class BodyCheck:
    """Hashes a body as it streams past and, for a signed payload, compares at the end.

    ``finish()`` raises ``XAmzContentSHA256Mismatch`` when the body does not
    hash to what the client signed; the caller must not commit before it.
    """

    def __init__(self, expected_hex: str) -> None:
        self._expected = expected_hex.lower()
        self._hash = hashlib.sha256() if expected_hex else None

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def finish(self) -> None:
        if self._hash is None:
            return
        actual = self._hash.hexdigest()
        if not hmac.compare_digest(actual.encode(), self._expected.encode()):
            raise S3Error("XAmzContentSHA256Mismatch",
                          "The provided 'x-amz-content-sha256' header does not match what was computed.", 400,
                          details=(("ClientComputedContentSHA256", self._expected),
                                   ("S3ComputedContentSHA256", actual)))


@dataclass(frozen=True, slots=True)
class Auth:
    """A request whose signature checked out, and what reading its body needs."""

    access_key: str
    payload: str
    """One of SIGNED, UNSIGNED, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER."""
    payload_sha256: str
    """For SIGNED: the hex SHA-256 the body must have (see body_check); else ""."""
    signing_key: bytes = field(repr=False)
    scope: str
    """``date/region/s3/aws4_request``: the credential scope without the access key."""
    amz_date: str
    """The request time as signed, ``YYYYMMDDTHHMMSSZ``."""
    seed_signature: str
    """The request's own signature (hex): the first "previous signature" of a chunk chain."""
    region: str
    presigned: bool
    signed_headers: tuple[str, ...]
    decoded_length: int | None = None
    """For the streaming modes: ``x-amz-decoded-content-length``, the payload's real size."""
    trailers: tuple[str, ...] = ()
    """For the streaming modes: the trailer names ``x-amz-trailer`` declares (lower-case)."""

    def body_check(self) -> BodyCheck:
        """An incremental checker of the body against the signed hash (a no-op unless SIGNED)."""
        return BodyCheck(self.payload_sha256 if self.payload == SIGNED else "")

    def sign(self, string_to_sign: str) -> str:
        """The hex HMAC of ``string_to_sign`` under this request's signing key (chunk signatures)."""
        return hmac.new(self.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


LookupSecret = Callable[[str], "str | None"]


def authenticate(method: str, raw_path: bytes | str, raw_query: bytes | str, headers: Iterable[tuple[str, str]],
                 lookup: LookupSecret, now: float | None = None) -> Auth:
    """Check a request's SigV4 signature (header or presigned); an :class:`Auth` or S3Error.

    ``raw_path`` and ``raw_query`` are the request target as sent, undecoded:
    bytes, or str holding those bytes decoded as latin-1 (see
    :func:`storg.s3.uri.split_target`); ``headers`` (name, value)
    pairs, names in any case; ``lookup(access_key)`` the secret or None;
    ``now`` epoch seconds (default: the clock).
    """
    now = time.time() if now is None else now
    raw_path = wire_bytes(raw_path).decode("latin-1")
    raw_query = wire_bytes(raw_query).decode("latin-1")
    table: dict[str, list[str]] = {}
    for name, value in headers:
        table.setdefault(name.lower(), []).append(value)
    query = parse_query(raw_query)
    query_names = {name for name, _ in query}
    authorization = table.get("authorization")
    if authorization and "X-Amz-Algorithm" in query_names:
        raise invalid_argument("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                               "or the Authorization header should be specified", "Authorization")
    if authorization:
        return _header_auth(method, raw_path, raw_query, table, authorization, lookup, now)
    if "X-Amz-Algorithm" in query_names or "X-Amz-Signature" in query_names:
        return _query_auth(method, raw_path, raw_query, table, query, lookup, now)
    if "AWSAccessKeyId" in query_names or "Signature" in query_names:
        raise invalid_request("Signature Version 2 is not supported; sign requests with AWS Signature Version 4")
    raise access_denied("Anonymous access is not allowed: sign the request (AWS Signature Version 4)")


# -- the two ways of carrying a signature ----------------------------------------------------------------------------

def _header_auth(method: str, raw_path: str, raw_query: str, table: dict[str, list[str]],
                 authorization: list[str], lookup: LookupSecret, now: float) -> Auth:
    if len(authorization) != 1:
        raise _malformed("more than one Authorization header")
    value = authorization[0].strip()
    algorithm, _, rest = value.partition(" ")
    if algorithm == "AWS":
        raise invalid_request("Signature Version 2 is not supported; sign requests with AWS Signature Version 4")
    if algorithm != ALGORITHM:
        raise _malformed(f"the authorization algorithm {algorithm!r} is not supported; use {ALGORITHM}")
    fields: dict[str, str] = {}
    for piece in rest.split(","):
        name, eq, item = piece.strip().partition("=")
        if not eq or name in fields:
            raise _malformed(f"the Authorization header has a malformed or repeated field near {piece.strip()!r}")
        fields[name] = item.strip()
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if name not in fields]
    if missing:
        raise _malformed(f"the Authorization header lacks {', '.join(missing)}")
    access_key, scope_date, region = _credential(fields["Credential"], _malformed)
    amz_date = _request_date(table)
    if scope_date != amz_date[:8]:
        raise _malformed(f"Invalid credential date {scope_date!r}: it is not the date of X-Amz-Date {amz_date!r}")
    secret = _secret(lookup, access_key)
    skew = _epoch(amz_date) - now
    if abs(skew) > MAX_SKEW_S:
        raise S3Error("RequestTimeTooSkewed", "The difference between the request time and the server's time "
                      "is too large.", 403,
                      details=(("RequestTime", amz_date), ("ServerTime", _format_amz_date(now)),
                               ("MaxAllowedSkewMilliseconds", str(MAX_SKEW_S * 1000))))
    content = _one(table, "x-amz-content-sha256")
    if content is None:
        raise invalid_request("Missing required header for this request: x-amz-content-sha256")
    payload, payload_sha256 = _payload_mode(content)
    signed_headers = _signed_headers(fields["SignedHeaders"], table, _malformed)
    key = _signing_key(secret, scope_date, region, SERVICE)
    scope = f"{scope_date}/{region}/{SERVICE}/{TERMINATOR}"
    _verify(method, raw_path, canonical_query(raw_query), table, signed_headers, content,
            amz_date, scope, key, fields["Signature"])
    decoded_length, trailers = _streaming_headers(table, payload)
    return Auth(access_key=access_key, payload=payload, payload_sha256=payload_sha256, signing_key=key,
                scope=scope, amz_date=amz_date, seed_signature=fields["Signature"].lower(), region=region,
                presigned=False, signed_headers=signed_headers, decoded_length=decoded_length, trailers=trailers)


def _query_auth(method: str, raw_path: str, raw_query: str, table: dict[str, list[str]],
                query: list[tuple[str, str]], lookup: LookupSecret, now: float) -> Auth:
    params: dict[str, str] = {}
    for name, value in query:
        if name.startswith("X-Amz-"):
            if name in params:
                raise _query_error(f"the query parameter {name} is repeated")
            params[name] = value
    missing = [name for name in _PRESIGN_PARAMS if name not in params]
    if missing:
        raise _query_error(f"Query-string authentication requires {', '.join(missing)}")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_error(f"X-Amz-Algorithm must be {ALGORITHM}, not {params['X-Amz-Algorithm']!r}")
    access_key, scope_date, region = _credential(params["X-Amz-Credential"], _query_error)
    amz_date = _parse_amz_date(params["X-Amz-Date"], _query_error)
    if scope_date != amz_date[:8]:
        raise _query_error(f"Invalid credential date {scope_date!r}: it is not the date of X-Amz-Date {amz_date!r}")
    expires_text = params["X-Amz-Expires"]
    if not expires_text.isdigit() or not 1 <= int(expires_text) <= MAX_PRESIGN_EXPIRES_S:
        raise _query_error(f"X-Amz-Expires must be a whole number of seconds from 1 to {MAX_PRESIGN_EXPIRES_S} "
                           f"(7 days), not {expires_text!r}")
    secret = _secret(lookup, access_key)
    signed_at = _epoch(amz_date)
    if signed_at - now > MAX_SKEW_S:
        raise access_denied("Request is not valid yet")
    if now > signed_at + int(expires_text):
        raise S3Error("AccessDenied", "Request has expired", 403,
                      details=(("X-Amz-Expires", expires_text), ("Expires", _format_amz_date(signed_at
                                                                                              + int(expires_text))),
                               ("ServerTime", _format_amz_date(now))))
    content = params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    payload, payload_sha256 = _payload_mode(content)
    if payload in STREAMING_MODES:
        raise _query_error("a presigned URL cannot sign a streaming (aws-chunked) payload")
    signed_headers = _signed_headers(params["X-Amz-SignedHeaders"], table, _query_error)
    key = _signing_key(secret, scope_date, region, SERVICE)
    scope = f"{scope_date}/{region}/{SERVICE}/{TERMINATOR}"
    _verify(method, raw_path, canonical_query(raw_query, exclude=frozenset({"X-Amz-Signature"})), table,
            signed_headers, content, amz_date, scope, key, params["X-Amz-Signature"])
    return Auth(access_key=access_key, payload=payload, payload_sha256=payload_sha256, signing_key=key,
                scope=scope, amz_date=amz_date, seed_signature=params["X-Amz-Signature"].lower(), region=region,
                presigned=True, signed_headers=signed_headers)


# -- the pieces --------------------------------------------------------------------------------------------------------

def canonical_request(method: str, canonical_uri: str, canonical_query_string: str, table: dict[str, list[str]],
                      signed_headers: tuple[str, ...], payload_hash: str) -> str:
    """The canonical request SigV4 hashes (exposed for tests and for error details)."""
    lines = [method.upper(), canonical_uri or "/", canonical_query_string]
    lines.extend(f"{name}:{','.join(' '.join(v.split()) for v in table.get(name, ()))}" for name in signed_headers)
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(payload_hash)
    return "\n".join(lines)


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()))


def _verify(method: str, raw_path: str, query: str, table: dict[str, list[str]], signed_headers: tuple[str, ...],
            payload_hash: str, amz_date: str, scope: str, key: bytes, provided: str) -> None:
    if not _HEX64.fullmatch(provided):
        raise _mismatch("the signature is not 64 hexadecimal digits", provided, "", "")
    wanted = provided.lower().encode()
    uris = [canonical_path(raw_path)]
    as_sent = raw_path.encode("latin-1").decode("utf-8", "replace")
    if as_sent and as_sent != uris[0]:
        uris.append(as_sent)
    first = ("", "")
    for uri in uris:
        canonical = canonical_request(method, uri, query, table, signed_headers, payload_hash)
        sts = string_to_sign(amz_date, scope, canonical)
        ours = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(ours, wanted):
            return
        first = first if first[0] else (sts, canonical)
    raise _mismatch("The request signature we calculated does not match the signature you provided. "
                    "Check your key and signing method.", provided, *first)


@functools.lru_cache(maxsize=SIGNING_KEY_CACHE)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The derived SigV4 key for ``date`` (``YYYYMMDD``), ``region`` and ``service`` (cached)."""
    return _signing_key(secret, date, region, service)


def _credential(text: str, error: Callable[[str], S3Error]) -> tuple[str, str, str]:
    parts = text.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise error(f"the credential {text!r} is not ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request")
    access_key, date, region, service, terminator = parts
    if terminator != TERMINATOR:
        raise error(f"the credential must end with {TERMINATOR!r}, not {terminator!r}")
    if service != SERVICE:
        raise error(f"Credential should be scoped to correct service: 's3' (not {service!r})")
    if not re.fullmatch(r"\d{8}", date):
        raise error(f"the credential date {date!r} is not YYYYMMDD")
    if not region:
        raise error("the credential has an empty region")
    return access_key, date, region


def _request_date(table: dict[str, list[str]]) -> str:
    amz = _one(table, "x-amz-date")
    if amz is not None:
        return _parse_amz_date(amz.strip(), _malformed)
    date = _one(table, "date")
    if date is None:
        raise access_denied("AWS authentication requires a valid Date or x-amz-date header")
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise access_denied("AWS authentication requires a valid Date or x-amz-date header") from None
    return _format_amz_date(parsed.timestamp())


def _parse_amz_date(text: str, error: Callable[[str], S3Error]) -> str:
    if not _AMZ_DATE.fullmatch(text):
        raise error(f"the date {text!r} is not in the ISO 8601 basic format YYYYMMDDTHHMMSSZ")
    try:
        _epoch(text)
    except ValueError:
        raise error(f"the date {text!r} is not a real time") from None
    return text


def _epoch(amz_date: str) -> int:
    """Epoch seconds of a checked ``YYYYMMDDTHHMMSSZ`` (datetime, not strptime: a third of the cost
    of a whole signature check went to strptime)."""
    moment = datetime(int(amz_date[0:4]), int(amz_date[4:6]), int(amz_date[6:8]), int(amz_date[9:11]),
                      int(amz_date[11:13]), int(amz_date[13:15]), tzinfo=UTC)
    return int(moment.timestamp())


def _format_amz_date(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def _secret(lookup: LookupSecret, access_key: str) -> str:
    secret = lookup(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                      403, details=(("AWSAccessKeyId", access_key),))
    return secret


def _payload_mode(content: str) -> tuple[str, str]:
    content = content.strip()
    mode = _CONTENT_MODES.get(content)
    if mode is not None:
        return mode, ""
    if _HEX64.fullmatch(content):
        return SIGNED, content.lower()
    if content.startswith("STREAMING-AWS4-ECDSA"):
        raise S3Error("NotImplemented", "Signature Version 4A (ECDSA) is not supported", 501)
    raise invalid_argument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                           "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER "
                           "or a valid sha256 value.", "x-amz-content-sha256", content)


def _signed_headers(text: str, table: dict[str, list[str]], error: Callable[[str], S3Error]) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if any(not name or name != name.lower() for name in names) or len(set(names)) != len(names):
        raise error(f"SignedHeaders {text!r} is not a list of distinct lower-case header names joined by ';'")
    if "host" not in names:
        raise error("SignedHeaders must include host")
    absent = [name for name in names if name not in table]
    if absent:
        raise _mismatch(f"the signed header(s) {', '.join(absent)} are not in the request", "", "", "")
    # Every x-amz-* header changes what a request does (x-amz-copy-source makes a PUT a copy,
    # x-amz-metadata-directive replaces metadata): one the signer did not sign could be added
    # by whoever holds a presigned URL or replays a request.  x-amz-content-sha256 is exempt,
    # as on S3: its value is the canonical request's last line, so it is signed anyway.
    unsigned = sorted(name for name in table
                      if name.startswith("x-amz-") and name not in names and name not in _SIGNED_ANYWAY)
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were not signed", 403,
                      details=(("HeadersNotSigned", ", ".join(unsigned)),))
    return names


_SIGNED_ANYWAY = frozenset({"x-amz-content-sha256"})


def _streaming_headers(table: dict[str, list[str]], payload: str) -> tuple[int | None, tuple[str, ...]]:
    if payload not in STREAMING_MODES:
        return None, ()
    text = _one(table, "x-amz-decoded-content-length")
    if text is None:
        raise S3Error("MissingContentLength", "an aws-chunked upload needs the x-amz-decoded-content-length "
                      "header", 411)
    if not text.strip().isdigit():
        raise invalid_argument(f"x-amz-decoded-content-length must be a whole number, not {text!r}",
                               "x-amz-decoded-content-length", text)
    trailer = _one(table, "x-amz-trailer") or ""
    names = tuple(name.strip().lower() for name in trailer.split(",") if name.strip())
    if payload == STREAMING_SIGNED and names:
        raise invalid_request("x-amz-trailer needs a -TRAILER payload mode in x-amz-content-sha256")
    return int(text), names


def _one(table: dict[str, list[str]], name: str) -> str | None:
    values = table.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise invalid_argument(f"the header {name} is repeated", name)
    return values[0]


def _malformed(message: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed", message, 400)


def _query_error(message: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", message, 400)


def _mismatch(message: str, provided: str, sts: str, canonical: str) -> S3Error:
    details = [("SignatureProvided", provided)] if provided else []
    if sts:
        details += [("StringToSign", sts), ("CanonicalRequest", canonical)]
    return S3Error("SignatureDoesNotMatch", message, 403, details=tuple(details))
