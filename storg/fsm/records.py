"""Snapshot records of the file store state machine, streamed as CODEC frames.

A snapshot is a stream of bounded frames rather than one document, so a
namespace of a million files is written, sent and read back without ever
holding it as one bytes object.  The stream is: one :class:`SnapshotHeader`
(the format and how many records of each kind follow, which is how a
truncated stream is caught), then the members (the existing
:class:`~storg.wire.MemberAddress` frame), then the chunk map in
:class:`ChunkBatch` frames, the namespace in :class:`FileBatch` frames
(in path order) and one session record per client session.

Why batches (format 2): a node restarting from a snapshot of 100,000 files
spent most of its start decoding 200,000 tiny frames through the generic
:mod:`storg.wire.schema` path.  A batch carries up to a thousand chunks or
about 64 KiB of files, and its layout is decoded by hand and column by
column: the chunk rows have a fixed size (one ``struct.iter_unpack``),
holder sets are written once per batch and referred to by index, the
paths of a batch are one UTF-8 text split at NUL, and a file's bytes are
the state machine's own packed form (:func:`pack_file`), so restoring a
file is a slice, not a rebuild.

Type bytes 80-95 are reserved for these records; 80-86 and 88-92 are taken
here.  Format 3 (object attributes, issue 18) writes files as type 90, whose
per-file column is each record's length rather than its chunk count (a
record may end in attributes, see :func:`pack_attrs`), and put sessions as
type 89 (FileInfo gained ``attrs``); 88 and 83 are still read.  Its header
(type 92) also counts the S3 access keys, one :class:`S3KeyRecord` each
after the sessions.  81 and 82 are format 1's one-record-per-frame chunks and files:
still read (slowly, through the generic schema) so that a data_dir written
before format 2 restarts, never written.  Hashes are raw 32-byte SHA-256
digests inside the batches.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate, chain, repeat
from operator import add, itemgetter, mul

from storg.wire.codec import CODEC
from storg.wire.files import ChunkRef, FileInfo
from storg.wire.objects import NO_ATTRS, ObjectAttrs, decode_attrs, encode_attrs
from storg.wire.record import record
from storg.wire.records import CodecError, Reader, short_str
from storg.wire.schema import (
    ID,
    SHA256,
    STR16,
    STR32,
    U16,
    U32,
    U64,
    ListOf,
    Nested,
    layout,
    register_struct,
)

SNAPSHOT_FORMAT = 3
"""Bumped whenever the meaning or order of the records changes (2: batched chunks and files;
3: files with object attributes, :class:`FileBatch` frames of type 90 and session records of
type 89, whose FileInfo has attributes)."""

READABLE_FORMATS = (1, 2, 3)
"""Formats a snapshot may have to be restored; only SNAPSHOT_FORMAT is written."""

CHUNKS_PER_BATCH = 1024
"""Chunk rows per :class:`ChunkBatch` frame: 46 bytes each, so about 47 KiB."""

FILE_BATCH_BYTES = 64 * 1024
"""A :class:`FileBatch` is closed once its files take this many bytes (a huge file goes alone)."""


@layout(U16, U64, U64, U64, U64)
@record
class SnapshotHeader:
    """First frame of a snapshot: its format and the number of records of each kind."""

    format: int
    members: int
    chunks: int
    files: int
    sessions: int


@layout(U16, U64, U64, U64, U64, U64)
@record
class SnapshotHeader3:
    """Format 3's first frame: :class:`SnapshotHeader` and the number of S3 key records (last)."""

    format: int
    members: int
    chunks: int
    files: int
    sessions: int
    s3_keys: int


@layout(ID, STR16, ID, STR16, U64)
@record
class S3KeyRecord:
    """One S3 access key, secret included (snapshots are sealed at rest, issue 16)."""

    key_id: str
    name: str
    role: str
    secret: str
    created_ns: int


# --- the packed forms the state machine keeps ------------------------------------------

_FILE_HEAD = struct.Struct(">QQQ32s")
DIGEST_BYTES = 32


FILE_HEAD_BYTES = _FILE_HEAD.size
"""Bytes of a packed file record before its chunk digests."""


def pack_file(size: int, sha: bytes, modified_ns: int, version: int, chunks: bytes,
              attrs: bytes = b"") -> bytes:
    """A namespace entry packed into one bytes object: the per-file memory is what limits scale.

    Layout: size, modified_ns, version (u64 each), the content's SHA-256
    (32 raw bytes), then the chunks' raw digests back to back.  One object
    of ~120 bytes for a one-chunk file, where separate ints, strings and a
    record object cost about three times that.  Plain ``bytes``, not a
    subclass: building a subclass instance costs about a microsecond more,
    which is most of a file's restore.  The snapshot carries this very
    layout, so a restored file is one slice of its frame.

    ``attrs`` is the object attributes' tail (:func:`pack_attrs`), after the
    digests; a file without attributes has none, so its record is exactly
    what it was before attributes existed.
    """
    return _FILE_HEAD.pack(size, modified_ns, version, sha) + chunks + attrs


# The attributes' tail of a packed record.  A record without one is head plus
# whole digests; every tail's length is not a multiple of 32, which is how a
# record says it has one, and its last byte says which form it is:
# 1: the raw MD5 (16 bytes) then the byte, for attributes that are only an
#    MD5 ETag (every file put since ETags exist): 17 bytes per file;
# 2: encode_attrs bytes, their length (u32), the byte;
# 3: the same with one zero byte before the length, where form 2 would be
#    a multiple of 32 long.
_TAIL_MD5 = 1
_TAIL_ATTRS = 2
_TAIL_ATTRS_PADDED = 3
MD5_TAIL_BYTES = 17
_HEX = frozenset("0123456789abcdef")


def pack_attrs(attrs: ObjectAttrs) -> bytes:
    """The tail a record keeps for ``attrs`` (empty for no attributes); CodecError if too big."""
    if attrs == NO_ATTRS:
        return b""
    etag = attrs.etag
    if len(etag) == 32 and _HEX.issuperset(etag) and attrs == ObjectAttrs(etag):
        return bytes.fromhex(etag) + b"\x01"
    raw = encode_attrs(attrs)
    if (len(raw) + 5) % DIGEST_BYTES:
        return raw + _U32.pack(len(raw)) + b"\x02"
    return raw + b"\x00" + _U32.pack(len(raw)) + b"\x03"


def _chunks_end(rec: bytes) -> int:
    """Where a record's digests end (its length, when it has no attributes); ValueError if malformed."""
    n = len(rec)
    if (n - FILE_HEAD_BYTES) % DIGEST_BYTES == 0:
        return n
    kind = rec[-1]
    if kind == _TAIL_MD5:
        end = n - MD5_TAIL_BYTES
    elif kind in (_TAIL_ATTRS, _TAIL_ATTRS_PADDED):
        if n < FILE_HEAD_BYTES + 5:
            raise ValueError(f"a {n}-byte file record")
        end = n - 5 - (kind == _TAIL_ATTRS_PADDED) - _U32.unpack_from(rec, n - 5)[0]
    else:
        raise ValueError(f"file record tail of kind {kind}")
    if end < FILE_HEAD_BYTES or (end - FILE_HEAD_BYTES) % DIGEST_BYTES:
        raise ValueError(f"a {n}-byte file record whose attributes do not fit")
    return end


def file_attrs(rec: bytes) -> ObjectAttrs:
    """The attributes a packed record keeps (NO_ATTRS if none)."""
    n = len(rec)
    if (n - FILE_HEAD_BYTES) % DIGEST_BYTES == 0:
        return NO_ATTRS
    if rec[-1] == _TAIL_MD5:
        return ObjectAttrs(rec[-MD5_TAIL_BYTES:-1].hex())
    end = _chunks_end(rec)
    stop = n - 5 - (rec[-1] == _TAIL_ATTRS_PADDED)
    return decode_attrs(memoryview(rec)[end:stop])


def file_etag(rec: bytes) -> str:
    """Only the ETag of a packed record ("" if none): conditions read it, most often in the MD5 form."""
    n = len(rec)
    if (n - FILE_HEAD_BYTES) % DIGEST_BYTES == 0:
        return ""
    if rec[-1] == _TAIL_MD5:
        return rec[-MD5_TAIL_BYTES:-1].hex()
    return file_attrs(rec).etag


def effective_etag(rec: bytes) -> str:
    """The ETag a file answers to: its own, else (a file stored before ETags) its SHA-256 in hex.

    One rule for the conditions decided at apply and for what the S3
    gateway shows, so an ``If-Match`` with the ETag a client was given
    matches at apply too.
    """
    return file_etag(rec) or _FILE_HEAD.unpack_from(rec)[3].hex()


def with_tail(rec: bytes, tail: bytes) -> bytes:
    """The record with its attributes replaced by ``tail`` (a :func:`pack_attrs` result)."""
    return rec[:_chunks_end(rec)] + tail


def check_record(rec: bytes) -> None:
    """ValueError unless ``rec`` is a well-formed packed record (a snapshot's are checked so)."""
    if len(rec) < FILE_HEAD_BYTES:
        raise ValueError(f"a {len(rec)}-byte file record")
    if _chunks_end(rec) != len(rec) and rec[-1] != _TAIL_MD5:
        try:
            file_attrs(rec)
        except CodecError as exc:
            raise ValueError(f"file attributes: {exc}") from None


def file_head(rec: bytes) -> tuple[int, int, int, bytes]:
    """size, modified_ns, version and sha of a packed file, in one unpacking."""
    return _FILE_HEAD.unpack_from(rec)


def file_size(rec: bytes) -> int:
    return _FILE_HEAD.unpack_from(rec)[0]


def file_chunks(rec: bytes) -> bytes:
    """The raw chunk digests of a packed file, back to back."""
    return rec[FILE_HEAD_BYTES:_chunks_end(rec)]


# --- format 1 (read only): one frame per chunk and per file -------------------------------

@layout(SHA256, U32, U64, ListOf(ID))
@record
class ChunkRecord:
    """Format 1's chunk map entry (hex hash); restore treats it as a batch of one."""

    hash: str
    size: int
    refs: int
    holders: tuple[str, ...]


@layout(STR16, U64, SHA256, U64, U64, ListOf(SHA256))
@record
class FileRecord:
    """Format 1's namespace entry (hex hashes); restore treats it as a batch of one."""

    path: str
    size: int
    sha256: str
    modified_ns: int
    version: int
    chunks: tuple[str, ...]


# --- batches: hand-written layouts, decoded without the generic schema ---------------------

@record
class ChunkBatch:
    """Consecutive chunk map entries.

    ``holder_sets`` lists each distinct holder set once (sorted node ids);
    each row of ``chunks`` is (raw digest, size, refs, index into
    ``holder_sets``).  Layout: n_sets u16, each set as n u8 then n ids
    (u8-length UTF-8); n_rows u32; rows of digest 32s, size u32, refs u64,
    set u16.  ``refs`` is checked against the files on restore.
    """

    holder_sets: tuple[tuple[str, ...], ...]
    chunks: tuple[tuple[bytes, int, int, int], ...]


@record
class FileBatch:
    """Consecutive namespace entries: ``paths[i]`` is stored as ``files[i]``.

    Layout, column by column so that decoding runs in C: n u32; each
    file's number of chunks (n u32s); the byte length of the paths (u32)
    and the paths in UTF-8, separated by NUL (which no path may contain,
    as no normal form does); then the files' :func:`pack_file` bytes back
    to back (56 + 32 per chunk).  Chunk sizes and holders come from the
    chunk batches.
    """

    paths: tuple[str, ...]
    files: tuple[bytes, ...]


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_CHUNK_ROW = struct.Struct(">32sIQH")
_MIN_FILE_BYTES = 4 + _FILE_HEAD.size
_SET_INDEX = itemgetter(3)
_SWAP = sys.byteorder == "little"
"""Chunk counts are big-endian u32s on the wire; array("I") holds native ones."""

if array("I").itemsize != 4:
    raise ImportError("storg needs a 4-byte array('I') for snapshot file batches")


def encode_chunk_batch(batch: ChunkBatch, out: list) -> None:
    sets = batch.holder_sets
    if len(sets) > 0xFFFF:
        raise CodecError(f"{len(sets)} holder sets do not fit in one chunk batch")
    out.append(_U16.pack(len(sets)))
    for holders in sets:
        if len(holders) > 0xFF:
            raise CodecError(f"a holder set of {len(holders)} nodes")
        out.append(_U8.pack(len(holders)))
        out.extend(map(short_str, holders))
    rows = batch.chunks
    out.append(_U32.pack(len(rows)))
    pack = _CHUNK_ROW.pack
    n_sets = len(sets)
    for digest, size, refs, index in rows:
        if len(digest) != DIGEST_BYTES or index >= n_sets:
            raise CodecError(f"bad chunk row: digest of {len(digest)} bytes, holder set {index} of {n_sets}")
        out.append(pack(digest, size, refs, index))


def read_chunk_batch(r: Reader) -> ChunkBatch:
    n_sets = r.u16()
    sets = []
    for _ in range(n_sets):
        n = r.u8()
        if n > r.remaining():
            raise CodecError(f"{n} holders cannot fit in the {r.remaining()} bytes left")
        sets.append(tuple([r.short_str() for _ in range(n)]))
    count = r.u32()
    size = count * _CHUNK_ROW.size
    if size > r.remaining():
        raise CodecError(f"{count} chunk rows cannot fit in the {r.remaining()} bytes left")
    rows = tuple(_CHUNK_ROW.iter_unpack(r.buf[r.pos:r.pos + size]))
    r.pos += size
    if rows and max(map(_SET_INDEX, rows)) >= n_sets:
        raise CodecError(f"a chunk row refers to holder set {max(map(_SET_INDEX, rows))} of {n_sets}")
    return ChunkBatch(tuple(sets), rows)


def _encode_columns(paths: tuple[str, ...], column: array, files: tuple[bytes, ...], out: list) -> None:
    """What file batches of both formats share: n u32, one u32 per file (``column``: format 2's
    chunk counts, format 3's record lengths), the paths NUL-joined in UTF-8, then the records."""
    text = "\x00".join(paths)
    if text.count("\x00") != max(len(paths) - 1, 0):
        raise CodecError("a file path contains NUL")
    raw = text.encode("utf-8")
    if _SWAP:
        column.byteswap()
    out += (_U32.pack(len(paths)), column.tobytes(), _U32.pack(len(raw)), raw)
    out.extend(files)


def _read_columns(r: Reader) -> tuple[array, list[str]]:
    """The inverse of :func:`_encode_columns` up to the records: (the u32 column, the paths)."""
    count = r.u32()
    if count * _MIN_FILE_BYTES > r.remaining():
        raise CodecError(f"{count} files cannot fit in the {r.remaining()} bytes left")
    column = array("I", r.take(4 * count))
    if _SWAP:
        column.byteswap()
    try:
        text = r.take(r.u32()).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("a file path is not UTF-8") from None
    paths = text.split("\x00") if count else []
    if len(paths) != count or (not count and text):
        raise CodecError(f"{len(paths)} paths for {count} files")
    return column, paths


def encode_file_batch(batch: FileBatch, out: list) -> None:
    """Format 2's layout: only for records without attributes (tests write old snapshots with it)."""
    paths, files = batch.paths, batch.files
    if len(paths) != len(files):
        raise CodecError(f"{len(paths)} paths for {len(files)} files")
    counts = array("I")
    head = _FILE_HEAD.size
    for path, rec in zip(paths, files, strict=True):
        if not isinstance(rec, bytes):
            raise CodecError(f"file {path!r} is a {type(rec).__name__}, not a packed record")
        chunks, odd = divmod(len(rec) - head, DIGEST_BYTES)
        if odd or chunks < 0:
            raise CodecError(f"cannot encode file {path!r}: a {len(rec)}-byte record")
        counts.append(chunks)
    _encode_columns(paths, counts, files, out)


def read_file_batch(r: Reader) -> FileBatch:
    """Column by column: no Python-level loop over the files, which is most of a restart."""
    counts, paths = _read_columns(r)
    count = len(paths)
    head = _FILE_HEAD.size
    block = r.take(head * count + DIGEST_BYTES * sum(counts))
    # Where each record ends: head bytes per file so far plus 32 per chunk so far.
    ends = list(map(add, range(head, head * count + 1, head),
                    map(mul, accumulate(counts), repeat(DIGEST_BYTES))))
    files = map(block.__getitem__, map(slice, chain((0,), ends), ends))
    return FileBatch(tuple(paths), tuple(files))


@record
class FileBatch3:
    """Format 3's namespace entries: as :class:`FileBatch`, but the column gives each record's length.

    Layout: n u32; each record's length (n u32s); the byte length of the
    paths (u32) and the paths in UTF-8 separated by NUL; the records back
    to back.  A record's form (digests, then attributes) is checked on restore.
    """

    paths: tuple[str, ...]
    files: tuple[bytes, ...]


def encode_file_batch3(batch: FileBatch3, out: list) -> None:
    paths, files = batch.paths, batch.files
    if len(paths) != len(files):
        raise CodecError(f"{len(paths)} paths for {len(files)} files")
    if not all(type(rec) is bytes for rec in files):
        raise CodecError("a file is not a packed record")
    _encode_columns(paths, array("I", map(len, files)), files, out)


def read_file_batch3(r: Reader) -> FileBatch3:
    lengths, paths = _read_columns(r)
    block = r.take(sum(lengths))
    ends = list(accumulate(lengths))
    files = map(block.__getitem__, map(slice, chain((0,), ends), ends))
    return FileBatch3(tuple(paths), tuple(files))


@layout(STR16, U64, SHA256, U64, U64, ListOf(Nested(ChunkRef)))
@record
class _FileInfoV2:
    """FileInfo as formats 1 and 2 wrote it in put sessions (before attributes)."""

    path: str
    size: int
    sha256: str
    modified_ns: int
    version: int
    chunks: tuple[ChunkRef, ...] = ()


@layout(U64, U64, U64, Nested(_FileInfoV2))
@record
class SessionPutRecordV2:
    """Formats 1 and 2's put session (read only): restored as a :class:`SessionPutRecord`."""

    client_id: int
    seq: int
    index: int
    info: _FileInfoV2

    def upgraded(self) -> SessionPutRecord:
        i = self.info
        return SessionPutRecord(self.client_id, self.seq, self.index,
                                FileInfo(i.path, i.size, i.sha256, i.modified_ns, i.version, i.chunks))


@layout(U64, U64, U64, Nested(FileInfo))
@record
class SessionPutRecord:
    """A client session whose last command was a put that succeeded with ``info``.

    ``index`` is the log index of that command: it orders sessions for eviction.
    """

    client_id: int
    seq: int
    index: int
    info: FileInfo


@layout(U64, U64, U64, U64)
@record
class SessionIndexRecord:
    """A client session whose last command succeeded with an integer (an rm's version)."""

    client_id: int
    seq: int
    index: int
    value: int


@layout(U64, U64, U64, ID, STR32)
@record
class SessionErrorRecord:
    """A client session whose last command was refused: the error's class name and message."""

    client_id: int
    seq: int
    index: int
    error: str
    message: str


SESSION_RECORDS = (SessionPutRecord, SessionIndexRecord, SessionErrorRecord)

_TYPE_BYTES: dict[int, type] = {
    80: SnapshotHeader, 81: ChunkRecord, 82: FileRecord,
    83: SessionPutRecordV2, 84: SessionIndexRecord, 85: SessionErrorRecord,
    89: SessionPutRecord, 91: S3KeyRecord, 92: SnapshotHeader3,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
CODEC.register(86, ChunkBatch, encode_chunk_batch, read_chunk_batch)
CODEC.register(88, FileBatch, encode_file_batch, read_file_batch)
CODEC.register(90, FileBatch3, encode_file_batch3, read_file_batch3)
