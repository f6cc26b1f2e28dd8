"""AWS's URI encoding, and the request target split into path and query.

SigV4 signs URI-encoded text, where only the unreserved characters
``A-Z a-z 0-9 - _ . ~`` stay literal and every other byte of the UTF-8 is
``%XX`` in upper-case hex.  Clients do not all put exactly that on the wire
(``+`` for a space in a query, lower-case hex, a literal ``!``), so the
server decodes what it received and encodes it again the AWS way before
signing; the ways of writing one request then all sign alike.

Query values: ``+`` is a space (form encoding, as S3 and MinIO read it; a
client that means a plus sends ``%2B``, as botocore does).
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

from storg.s3.errors import invalid_argument


def uri_encode(data: bytes | str, *, keep_slash: bool = False) -> str:
    """AWS UriEncode: unreserved characters literal, the rest ``%XX``; ``/`` kept if asked (paths)."""
    return quote(data, safe="/" if keep_slash else "")


def url_encode_key(key: str) -> str:
    """A key or prefix for ``encoding-type=url`` listings: ``/`` stays, the rest as :func:`uri_encode`.

    A space becomes ``%20`` and a plus ``%2B``, which both ``unquote`` and
    ``unquote_plus`` (botocore's choice) read back to the original.
    """
    return quote(key, safe="/")


def wire_bytes(text: bytes | str) -> bytes:
    """The bytes of a request-target piece: a ``str`` is taken as latin-1-decoded bytes (what
    :func:`split_target` gives, and what twisted.web's bytes decode to), unless it holds characters
    latin-1 cannot, when it is taken as Unicode text (UTF-8)."""
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def split_target(target: bytes | str) -> tuple[str, str]:
    """The raw request target (``/b/k?x=1``) split into raw path and raw query, undecoded."""
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    path, _, query = text.partition("?")
    return path, query


def _pairs(raw_query: bytes | str) -> list[tuple[bytes, bytes]]:
    pairs = []
    for piece in wire_bytes(raw_query).split(b"&"):
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        pairs.append((unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))))
    return pairs


def parse_query(raw_query: bytes | str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, decoded, in the order sent; ``?uploads`` gives ``("uploads", "")``."""
    out = []
    for name, value in _pairs(raw_query):
        try:
            out.append((name.decode("utf-8"), value.decode("utf-8")))
        except UnicodeDecodeError:
            raise invalid_argument("the query string is not valid UTF-8 once percent-decoded") from None
    return out


def canonical_query(raw_query: bytes | str, *, exclude: frozenset[str] = frozenset()) -> str:
    """SigV4's canonical query string: every pair encoded the AWS way, sorted by name then value.

    ``exclude`` names parameters left out (a presigned URL's ``X-Amz-Signature``).
    """
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in _pairs(raw_query)
                     if name.decode("utf-8", "replace") not in exclude)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_path(raw_path: bytes | str) -> str:
    """The path decoded once and encoded again the AWS way (S3 encodes once, keeps ``/``).

    The path itself is never normalised (``//`` and ``.`` segments stay):
    S3 signs the key exactly, and :mod:`storg.s3.names` refuses keys that
    storg cannot store.
    """
    return uri_encode(unquote_to_bytes(wire_bytes(raw_path)), keep_slash=True)
