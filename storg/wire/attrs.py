"""Object attributes: what S3 keeps beside an object's bytes, and their codec.

Every file may carry an :class:`ObjectAttrs`: the ETag (the MD5 of the
content for a single put, computed by the node that cuts the upload beside
its SHA-256), a content type, user metadata, checksums and, for a multipart
object, its parts' sizes.  They ride in :class:`~storg.wire.files.FileInfo`
and in the commands that write files (:mod:`storg.wire.objects`), and the
state machine keeps them in a file's packed record (:mod:`storg.fsm.records`).

A module of its own, apart from the object frames, because every
``FileInfo`` needs it: a short-lived storgctl that reads a FileInfo should
not build the S3 key and compose frames too.
"""

from __future__ import annotations

from storg.wire.reader import CodecError, Reader
from storg.wire.record import record
from storg.wire.schema import STR16, STR_PAIRS, U64, ListOf, compile_reader, fields_of, layout, write_fields

MAX_ATTRS_BYTES = 1 << 20
"""The largest encoded ObjectAttrs a command may carry (10,000 part sizes are 80 KB)."""


@layout(STR16, STR16, STR_PAIRS, STR_PAIRS, ListOf(U64), STR_PAIRS)
@record
class ObjectAttrs:
    """What S3 keeps beside an object's bytes; the default (all empty) is "none".

    ``etag`` unquoted: the MD5 hex of the content, or ``"<hex>-<N>"`` for a
    multipart object; ``""`` unknown (a file stored before ETags).
    ``metadata``: x-amz-meta-* with lower-case names without the prefix.
    ``checksums``: (algorithm upper-case, base64 value; ``"<b64>-<N>"``
    composite).  ``parts``: each part's size in order for a multipart
    object.  ``extra``: the gateway's own keys (e.g. a multipart upload's
    target).  Pairs keep the order given.
    """

    etag: str = ""
    content_type: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    checksums: tuple[tuple[str, str], ...] = ()
    parts: tuple[int, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()


NO_ATTRS = ObjectAttrs()

_ATTRS_FIELDS = fields_of(ObjectAttrs)
_read_attrs = compile_reader(ObjectAttrs, _ATTRS_FIELDS)


def encode_attrs(attrs: ObjectAttrs) -> bytes:
    """The attributes' layout alone (no version or type byte): what a packed file record keeps."""
    out: list[bytes] = []
    try:
        write_fields(_ATTRS_FIELDS, attrs, out)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode attributes: {exc}") from exc
    raw = b"".join(out)
    if len(raw) > MAX_ATTRS_BYTES:
        raise CodecError(f"attributes of {len(raw)} bytes exceed {MAX_ATTRS_BYTES}")
    return raw


def decode_attrs(raw: bytes | memoryview) -> ObjectAttrs:
    """The inverse of :func:`encode_attrs`; CodecError for anything else."""
    r = Reader(raw)
    attrs: ObjectAttrs = _read_attrs(r)
    r.done()
    return attrs


def composite_parts(parts: tuple[int, ...], size: int) -> bool:
    """Whether ``parts`` describes a file of ``size`` bytes (their sum), as a multipart object's must."""
    return bool(parts) and sum(parts) == size and all(p > 0 for p in parts)
