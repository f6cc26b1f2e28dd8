"""Snapshots of the state machine: the frozen image written from, and reading one back.

Snapshots must not stall the reactor: :meth:`~storg.fsm.machine.FileStoreStateMachine.freeze`
only copies the containers and :meth:`FrozenState.frames` encodes from that
copy in a thread, in bounded batch frames (see :mod:`storg.fsm.records`).
Restart time is dominated by reading a snapshot back, so
:class:`LoadedSnapshot` derives everything ``install`` needs while it
decodes, and a file's packed record is the same bytes in memory and on disk.
"""

from __future__ import annotations

import gc
import itertools
import operator
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, cast

from storg.config import Member, parse_address
from storg.fsm.errors import (
    ERRORS,
    SnapshotFormatError,
)
from storg.fsm.records import (
    CHUNKS_PER_BATCH,
    DIGEST_BYTES,
    FILE_BATCH_BYTES,
    FILE_HEAD_BYTES,
    MD5_TAIL_BYTES,
    READABLE_FORMATS,
    SNAPSHOT_FORMAT,
    ChunkBatch,
    ChunkRecord,
    FileBatch,
    FileBatch3,
    FileRecord,
    S3KeyRecord,
    SessionErrorRecord,
    SessionIndexRecord,
    SessionPutRecord,
    SessionPutRecordV2,
    SnapshotHeader,
    SnapshotHeader3,
    check_record,
    file_chunks,
    file_size,
    pack_file,
)
from storg.fsm.state import ChunkState, PackedFile, Session, chunk_digests_of, new_chunk_state
from storg.paths import MAX_PATH_BYTES, InvalidPath, normalize_path
from storg.wire import (
    CODEC,
    MemberAddress,
)
from storg.wire.files import (
    FileInfo,
)


class FrozenState:
    """An immutable image of the state at one applied index, cheap to take.

    Its containers are private copies and its values are immutable, so
    :meth:`frames` may run in any thread while the live state moves on.
    """

    __slots__ = ("_chunks", "_files", "_members", "_paths", "_s3_keys", "_sessions")

    def __init__(self, members: tuple[MemberAddress, ...], chunks: Mapping[bytes, ChunkState],
                 paths: tuple[str, ...], files: Mapping[str, PackedFile],
                 sessions: tuple[tuple[int, Session], ...],
                 s3_keys: tuple[S3KeyRecord, ...] = ()) -> None:
        self._s3_keys = s3_keys
        self._members = members
        self._chunks = MappingProxyType(chunks)
        self._paths = tuple(paths)
        self._files = MappingProxyType(files)
        self._sessions = sessions

    def canonical(self) -> FrozenState:
        """The same image with the chunk map in digest order: what two nodes' digests compare."""
        return FrozenState(self._members, dict(sorted(self._chunks.items())), self._paths,
                           self._files, self._sessions, self._s3_keys)

    def frames(self) -> Iterator[bytes]:
        """The snapshot as CODEC frames: the header, one frame per member, the chunk map and
        the namespace in bounded batches, then one frame per session."""
        encode = CODEC.encode
        yield encode(SnapshotHeader3(SNAPSHOT_FORMAT, len(self._members), len(self._chunks),
                                     len(self._paths), len(self._sessions), len(self._s3_keys)))
        for member in self._members:
            yield encode(member)
        chunks = iter(self._chunks.items())
        while batch := list(itertools.islice(chunks, CHUNKS_PER_BATCH)):
            yield encode(_chunk_batch(batch))
        files = self._files
        paths: list[str] = []
        records: list[PackedFile] = []
        pending = 0
        for path in self._paths:
            rec = files[path]
            paths.append(path)
            records.append(rec)
            # Its chunk count, the path in characters (cheaper than UTF-8
            # bytes and close enough for a bound), a separator, the record.
            pending += 5 + len(path) + len(rec)
            if pending >= FILE_BATCH_BYTES:
                yield encode(FileBatch3(tuple(paths), tuple(records)))
                paths.clear()
                records.clear()
                pending = 0
        if paths:
            yield encode(FileBatch3(tuple(paths), tuple(records)))
        for client_id, session in self._sessions:
            yield encode(_session_record(client_id, session))
        for key in self._s3_keys:
            yield encode(key)


def _chunk_batch(items: list[tuple[bytes, ChunkState]]) -> ChunkBatch:
    """One ChunkBatch: each distinct holder set listed once, in order of first use."""
    index: dict[frozenset[str], int] = {}
    rows = []
    for digest, (size, holders, refs) in items:
        i = index.get(holders)
        if i is None:
            i = index[holders] = len(index)
        rows.append((digest, size, refs, i))
    return ChunkBatch(tuple(tuple(sorted(holders)) for holders in index), tuple(rows))


def _session_record(client_id: int, s: Session) -> Any:
    if s.error is not None:
        return SessionErrorRecord(client_id, s.seq, s.index, s.error[0], s.error[1])
    if isinstance(s.result, FileInfo):
        return SessionPutRecord(client_id, s.seq, s.index, s.result)
    return SessionIndexRecord(client_id, s.seq, s.index, s.result)




def read_snapshot(frames: Iterable[bytes]) -> LoadedSnapshot:
    """Decode and check snapshot frames into a state ready to install; safe in any thread.

    Touches no state machine, so a large snapshot can be read off the
    reactor.  Raises CodecError or SnapshotFormatError on damaged input.
    """
    loaded = LoadedSnapshot()
    with _GC_PAUSE:
        for frame in frames:
            loaded.feed(CODEC.decode(frame))
        loaded.finish()
    return loaded


class _GCPause:
    """Cyclic garbage collection off while a snapshot is read; safe from several threads.

    Reading a large snapshot allocates one long-lived tracked object per
    chunk, which makes the collector walk the growing heap again and
    again: about a third of the read's CPU time for nothing, since the
    read makes no cycles.  Reference counting still frees everything else.
    A count (under a lock) re-enables collection only when the last
    concurrent reader is done, and only if it was enabled before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_GC_PAUSE = _GCPause()




_PATH_FAULTS = ("//", "/\x00", "/./", "/.\x00", "/../", "/..\x00")
_SIZE = struct.Struct(">Q")
_FIRST = operator.itemgetter(0)
_REFS = operator.itemgetter(2)
_CHUNK_DIGESTS = operator.itemgetter(slice(FILE_HEAD_BYTES, FILE_HEAD_BYTES + DIGEST_BYTES))
_ONE_CHUNK_FILE = FILE_HEAD_BYTES + DIGEST_BYTES
_ONE_CHUNK_MD5_FILE = _ONE_CHUNK_FILE + MD5_TAIL_BYTES
_LAST_BYTE = operator.itemgetter(-1)


def _chunk_batch_of_one(rec: ChunkRecord) -> ChunkBatch:
    """A format 1 chunk record as a batch: one code path checks both formats."""
    return ChunkBatch((tuple(rec.holders),), ((bytes.fromhex(rec.hash), rec.size, rec.refs, 0),))


def _file_batch_of_one(rec: FileRecord) -> FileBatch:
    """A format 1 file record as a batch (format 1 also wrote files in path order)."""
    chunks = b"".join(bytes.fromhex(h) for h in rec.chunks)
    return FileBatch((rec.path,), (pack_file(rec.size, bytes.fromhex(rec.sha256), rec.modified_ns,
                                             rec.version, chunks),))


def _all_normal(paths: tuple[str, ...]) -> bool:
    """Whether every path is a normal form (storg.paths' rules), tested on a whole batch at once.

    A path-by-path :func:`normalize_path` cost more than the rest of a
    file's restore.  Joined with NUL, which no normal form contains, every
    path reads NUL, "/", segments; an empty, "." or ".." segment then shows
    as one of ``_PATH_FAULTS``.  Long paths (possibly over the byte limit)
    and any failure are left to the exact check.
    """
    joined = "\x00" + "\x00".join(paths) + "\x00"
    n = len(paths)
    return (joined.count("\x00") == n + 1 and joined.count("\x00/") == n
            and max(map(len, paths)) * 4 <= MAX_PATH_BYTES
            and not any(fault in joined for fault in _PATH_FAULTS))


class LoadedSnapshot:
    """A snapshot decoded and checked batch by batch: the state it describes, ready to install.

    Built by :func:`read_snapshot`; once finished it is only read, by
    :meth:`FileStoreStateMachine.install`, which adopts its containers.
    Everything install needs is derived while decoding (paths in order,
    unreferenced chunks, bytes per holder), so installing is pointer work.
    """

    def __init__(self) -> None:
        self.header: SnapshotHeader | SnapshotHeader3 | None = None
        self.s3_keys: dict[str, S3KeyRecord] = {}
        self.members: dict[str, Member] = {}
        self.chunks: dict[bytes, ChunkState] = {}
        self.files: dict[str, PackedFile] = {}
        self.paths: list[str] = []
        self.file_bytes = 0
        self.unreferenced: set[bytes] = set()
        self.holder_sets: dict[frozenset[str], frozenset[str]] = {}
        self.usage: Counter[str] = Counter()
        self.sessions: list[tuple[int, Session]] = []
        self._session_ids: set[int] = set()
        self._refs: Counter[bytes] = Counter()
        self.installed = False

    def feed(self, record: object) -> None:
        if self.header is None:
            if not isinstance(record, (SnapshotHeader, SnapshotHeader3)):
                raise SnapshotFormatError(f"a snapshot starts with its header, not {type(record).__name__}")
            if record.format not in READABLE_FORMATS:
                raise SnapshotFormatError(f"unknown snapshot format {record.format}")
            if isinstance(record, SnapshotHeader3) != (record.format >= 3):
                raise SnapshotFormatError(f"a format {record.format} snapshot with a {type(record).__name__}")
            self.header = record
            return
        if isinstance(record, (FileBatch3, FileBatch)):
            self._files(record)
        elif isinstance(record, ChunkBatch):
            self._chunks(record)
        elif isinstance(record, MemberAddress):
            self._member(record)
        elif isinstance(record, (SessionPutRecord, SessionIndexRecord, SessionErrorRecord)):
            self._session(record)
        elif isinstance(record, ChunkRecord):
            self._chunks(_chunk_batch_of_one(record))
        elif isinstance(record, FileRecord):
            self._files(_file_batch_of_one(record))
        elif isinstance(record, SessionPutRecordV2):
            self._session(record.upgraded())
        elif isinstance(record, S3KeyRecord):
            self._s3_key(record)
        else:
            raise SnapshotFormatError(f"{type(record).__name__} is not a snapshot record")

    def _member(self, rec: MemberAddress) -> None:
        if rec.id in self.members:
            raise SnapshotFormatError(f"member {rec.id} appears twice")
        try:
            self.members[rec.id] = Member(parse_address(rec.peer), parse_address(rec.client))
        except ValueError as exc:
            raise SnapshotFormatError(f"member {rec.id}: {exc}") from None

    def _chunks(self, batch: ChunkBatch) -> None:
        if self.files:
            raise SnapshotFormatError("chunk records after the file records")
        sets = []
        for holders in batch.holder_sets:
            found = frozenset(holders)
            if not found:
                raise SnapshotFormatError("a chunk batch lists an empty holder set (a chunk with no holders)")
            sets.append(self.holder_sets.setdefault(found, found))
        if not batch.chunks:
            return
        chunks = self.chunks
        expected = len(chunks) + len(batch.chunks)
        # Column by column, so the per-chunk work runs in C (map, zip, compress).
        digests, sizes, refs, indexes = zip(*batch.chunks, strict=True)
        holder_sets: Iterable[frozenset[str]]
        if len(sets) == 1:
            holder_sets = itertools.repeat(sets[0])
            set_bytes = [sum(sizes)]
        else:
            holder_sets = map(sets.__getitem__, indexes)
            set_bytes = [0] * len(sets)
            for i, size in zip(indexes, sizes, strict=True):
                set_bytes[i] += size
        # holder_sets may be an endless repeat of the one set: the inner zip stops with sizes.
        chunks.update(zip(digests, map(new_chunk_state, zip(sizes, holder_sets, refs, strict=False)), strict=True))
        self.unreferenced.update(itertools.compress(digests, map(operator.not_, refs)))
        if len(chunks) != expected:
            twice = [d for d, n in Counter(row[0] for row in batch.chunks).items() if n > 1]
            raise SnapshotFormatError(f"chunk {twice[0].hex()} appears twice" if twice else
                                      f"{expected - len(chunks)} chunks of a batch appear in an earlier one")
        usage = self.usage
        for holder_set, total in zip(sets, set_bytes, strict=True):
            for holder in holder_set:
                usage[holder] += total

    def _files(self, batch: FileBatch | FileBatch3) -> None:
        paths, records = batch.paths, batch.files
        if not paths:
            return
        if min(map(len, records)) < FILE_HEAD_BYTES:
            raise SnapshotFormatError(f"a file record of {min(map(len, records))} bytes")
        if not _all_normal(paths):
            for path in paths:
                try:
                    normal = normalize_path(path)
                except InvalidPath as exc:
                    raise SnapshotFormatError(f"file record: {exc}") from None
                if normal != path:
                    raise SnapshotFormatError(f"file path {path!r} is not in normal form")
        # Strictly increasing paths: the order install relies on, and no path twice.
        last = self.paths[-1] if self.paths else ""
        if not (last < paths[0] and all(map(str.__lt__, paths, itertools.islice(paths, 1, None)))):
            previous = last
            for path in paths:
                if not previous < path:
                    raise SnapshotFormatError(f"file {path} appears twice" if previous == path else
                                              f"file {path} comes after {previous}: not in path order")
                previous = path
        chunks = self.chunks
        sizes = list(map(_FIRST, map(_SIZE.unpack_from, records)))
        shortest, longest = min(map(len, records)), max(map(len, records))
        one_chunk = shortest == longest == _ONE_CHUNK_FILE
        if not one_chunk and shortest == longest == _ONE_CHUNK_MD5_FILE:
            # Every file put since ETags exist: one chunk, then its MD5 and the tail's form byte.
            one_chunk = bytes(map(_LAST_BYTE, records)) == b"\x01" * len(records)
        if one_chunk:
            # The common batch: one chunk per file, checked column by column in C.
            digests = list(map(_CHUNK_DIGESTS, records))
            found = list(map(chunks.get, digests))
            if None in found or list(map(_FIRST, cast("list[ChunkState]", found))) != sizes:
                for path, rec in zip(paths, records, strict=True):
                    self._check_file(path, rec)
            self._refs.update(digests)
        else:
            for path, rec in zip(paths, records, strict=True):
                self._refs.update(self._check_file(path, rec))
        self.file_bytes += sum(sizes)
        self.files.update(zip(paths, records, strict=True))
        self.paths.extend(paths)

    def _check_file(self, path: str, rec: PackedFile) -> list[bytes]:
        """The digests of a file's chunks, once checked to be in the map and to add up to its size
        (and its attributes to be well formed)."""
        try:
            check_record(rec)
        except ValueError as exc:
            raise SnapshotFormatError(f"{path}: {exc}") from None
        digests = list(chunk_digests_of(file_chunks(rec)))
        total = 0
        for digest in digests:
            chunk = self.chunks.get(digest)
            if chunk is None:
                raise SnapshotFormatError(f"{path} refers to chunk {digest.hex()}, which is not in the map")
            total += chunk.size
        if total != file_size(rec):
            raise SnapshotFormatError(f"{path} is {file_size(rec)} bytes but its chunks add up to {total}")
        return digests

    def _s3_key(self, rec: S3KeyRecord) -> None:
        if rec.key_id in self.s3_keys:
            raise SnapshotFormatError(f"S3 key {rec.key_id} appears twice")
        if not rec.key_id or not rec.secret:
            raise SnapshotFormatError("an S3 key without an id or a secret")
        self.s3_keys[rec.key_id] = rec

    def _session(self, rec: Any) -> None:
        if rec.client_id == 0:
            raise SnapshotFormatError("a session of client 0 (no session)")
        if rec.client_id in self._session_ids:
            raise SnapshotFormatError(f"client {rec.client_id:x} has two sessions")
        self._session_ids.add(rec.client_id)
        if isinstance(rec, SessionErrorRecord):
            if rec.error not in ERRORS:
                raise SnapshotFormatError(f"session error {rec.error!r} is not a FileStoreError")
            session = Session(rec.seq, rec.index, error=(rec.error, rec.message))
        elif isinstance(rec, SessionPutRecord):
            session = Session(rec.seq, rec.index, rec.info)
        else:
            session = Session(rec.seq, rec.index, rec.value)
        self.sessions.append((rec.client_id, session))

    def finish(self) -> None:
        header = self.header
        if header is None:
            raise SnapshotFormatError("empty snapshot: no header")
        counts = {"members": len(self.members), "chunks": len(self.chunks),
                  "files": len(self.files), "sessions": len(self.sessions)}
        if isinstance(header, SnapshotHeader3):
            counts["s3_keys"] = len(self.s3_keys)
        elif self.s3_keys:
            raise SnapshotFormatError(f"S3 keys in a format {header.format} snapshot")
        for kind, count in counts.items():
            if getattr(header, kind) != count:
                raise SnapshotFormatError(
                    f"snapshot header announces {getattr(header, kind)} {kind}, found {count} (truncated?)")
        refs = self._refs
        if list(map(_REFS, self.chunks.values())) != list(map(refs.__getitem__, self.chunks)):
            for digest, chunk in self.chunks.items():
                if chunk.refs != refs[digest]:
                    raise SnapshotFormatError(
                        f"chunk {digest.hex()} records {chunk.refs} references, the files make {refs[digest]}")
        self._refs = Counter()
        self.usage = +self.usage  # no zero totals, as _count_usage keeps it
        self.sessions.sort(key=lambda item: item[1].index)
