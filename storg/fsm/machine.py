"""The replicated state machine of the file store: namespace, chunk map, client sessions.

Every node applies the same committed entries in the same order, so
``apply`` must be a pure function of the state and the entry: no clock, no
randomness, no iteration over anything whose order differs between nodes.
A refused command raises a :class:`FileStoreError` (the node hands it to
the proposer as the command's answer); the state is left untouched, which
is why every command is checked completely before anything changes.

Memory is the constraint that shapes the layout.  The namespace keeps one
small record per file (sizes and times as ints, hashes as raw bytes) and
no holders: holders belong to the chunk map, and :meth:`get` assembles a
:class:`~storg.wire.files.FileInfo` with the holders as they are at read
time.  Identical holder sets are shared, since in a small cluster nearly
every chunk has the same holders.

Snapshots must not stall the reactor: :meth:`FileStoreStateMachine.freeze`
only copies the containers (values are immutable, so a shallow copy is a
consistent image) and :meth:`FrozenState.frames` encodes from that copy in
a thread, in bounded batch frames (see :mod:`storg.fsm.records`).  Restart
time is dominated by reading a snapshot back, so :class:`LoadedSnapshot`
derives everything :meth:`FileStoreStateMachine.install` needs while it
decodes, and a file's packed record is the same bytes in memory and on disk.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import operator
import struct
import threading
from bisect import bisect_left, insort
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from twisted.logger import Logger

from storg.config import Member, parse_address
from storg.fsm.records import (
    CHUNKS_PER_BATCH,
    DIGEST_BYTES,
    FILE_BATCH_BYTES,
    FILE_HEAD_BYTES,
    READABLE_FORMATS,
    SNAPSHOT_FORMAT,
    ChunkBatch,
    ChunkRecord,
    FileBatch,
    FileRecord,
    SessionErrorRecord,
    SessionIndexRecord,
    SessionPutRecord,
    SnapshotHeader,
    file_chunks,
    file_head,
    file_size,
    pack_file,
)
from storg.fsm.members import MemberDirectory, MembershipStateMachine
from storg.paths import MAX_PATH_BYTES, ROOT, InvalidPath, normalize_path, normalize_prefix
from storg.raft.types import Entry, EntryType
from storg.wire import (
    BAD_REQUEST,
    CODEC,
    INTERNAL,
    NOT_FOUND,
    UNAVAILABLE,
    CodecError,
    ErrorCode,
    MemberAddress,
    ProbeCommand,
)
from storg.wire.files import (
    ChunkHoldersCommand,
    ChunkRef,
    CollectChunksCommand,
    FileInfo,
    PutFileCommand,
    PutInlineCommand,
    RemoveFileCommand,
)

log = Logger(namespace="storg.fsm")


# --- errors: deterministic refusals, each with the code the client sees ------------

class FileStoreError(Exception):
    """A command or query the state machine refuses; ``code`` is what the client is told."""

    code: ErrorCode = INTERNAL


class NotFound(FileStoreError):
    code = NOT_FOUND


class ChunkMissing(FileStoreError):
    """A dedup reuse named a chunk the cluster no longer has (collected meanwhile).

    UNAVAILABLE because nothing is wrong with the request: the client retries
    the put with the same seq, and the leader uploads the chunk afresh.
    """

    code = UNAVAILABLE


class StaleRequest(FileStoreError):
    """A command older than the last one its client session applied."""

    code = BAD_REQUEST


class StaleChange(FileStoreError):
    """A holder change decided on a chunk map entry that has changed since (or is gone).

    The leader's repair re-reads the chunk map and decides again.
    """

    code = UNAVAILABLE


class InvalidCommand(FileStoreError):
    """An entry that is not a valid command: undecodable, unknown or inconsistent."""

    code = BAD_REQUEST


class SnapshotFormatError(ValueError):
    """Snapshot frames that decode but do not describe a consistent state."""


_ERRORS: dict[str, type[FileStoreError]] = {
    cls.__name__: cls for cls in (NotFound, ChunkMissing, StaleRequest, StaleChange, InvalidCommand)
}


# --- state values (immutable, so a shallow copy of their containers is a snapshot) ---

class ChunkState(NamedTuple):
    """One chunk map entry: its size, the nodes holding it, how many file references it has.

    A named tuple rather than a frozen dataclass: restoring a snapshot
    builds one per chunk, and a tuple is built about three times faster.
    """

    size: int
    holders: frozenset[str]
    refs: int


_new_chunk_state = functools.partial(tuple.__new__, ChunkState)
"""ChunkState from a (size, holders, refs) tuple without the keyword-handling constructor."""

_File = bytes
"""A namespace entry, as :func:`~storg.fsm.records.pack_file` lays it out; snapshots carry the same bytes."""


@dataclass(frozen=True, slots=True)
class _Session:
    """A client's last applied command: its seq, log index and outcome (a result or an error)."""

    seq: int
    index: int
    result: Any = None
    error: tuple[str, str] | None = None

    def replay(self) -> Any:
        if self.error is not None:
            name, message = self.error
            raise _ERRORS[name](message)
        return self.result


def _digests(chunks: bytes) -> Iterator[bytes]:
    for pos in range(0, len(chunks), DIGEST_BYTES):
        yield chunks[pos:pos + DIGEST_BYTES]


# --- the sorted path index --------------------------------------------------------------

class _SortedPaths:
    """The namespace's paths in order, for ``ls`` of a folder without scanning everything.

    A list of sorted buckets of at most ``2 * load`` paths: an insert moves
    at most a bucket's worth of pointers, where one flat sorted list would
    move half the namespace on every new file.
    """

    def __init__(self, ordered: list[str] | None = None, load: int = 1000) -> None:
        self._load = load
        ordered = ordered or []
        self._buckets = [ordered[i:i + load] for i in range(0, len(ordered), load)]
        self._maxes = [bucket[-1] for bucket in self._buckets]

    def add(self, key: str) -> None:
        """Insert ``key``, which must not be present."""
        if not self._buckets:
            self._buckets.append([key])
            self._maxes.append(key)
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            i -= 1
            self._buckets[i].append(key)
            self._maxes[i] = key
        else:
            insort(self._buckets[i], key)
        bucket = self._buckets[i]
        if len(bucket) > 2 * self._load:
            self._buckets.insert(i + 1, bucket[self._load:])
            del bucket[self._load:]
            self._maxes.insert(i, bucket[-1])

    def remove(self, key: str) -> None:
        """Remove ``key``, which must be present."""
        i = bisect_left(self._maxes, key)
        bucket = self._buckets[i]
        j = bisect_left(bucket, key)
        del bucket[j]
        if not bucket:
            del self._buckets[i]
            del self._maxes[i]
        elif j == len(bucket):
            self._maxes[i] = bucket[-1]

    def from_key(self, start: str) -> Iterator[str]:
        """The keys >= ``start``, in order; do not change the index while iterating."""
        i = bisect_left(self._maxes, start)
        if i == len(self._maxes):
            return
        bucket = self._buckets[i]
        yield from itertools.islice(bucket, bisect_left(bucket, start), None)
        for bucket in itertools.islice(self._buckets, i + 1, None):
            yield from bucket

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._buckets)

    def snapshot(self) -> tuple[str, ...]:
        """All keys in order, as one immutable copy."""
        return tuple(self)


# --- the frozen image a snapshot is written from -----------------------------------------

class FrozenState:
    """An immutable image of the state at one applied index, cheap to take.

    Its containers are private copies and its values are immutable, so
    :meth:`frames` may run in any thread while the live state moves on.
    """

    __slots__ = ("_chunks", "_files", "_members", "_paths", "_sessions")

    def __init__(self, members: tuple[MemberAddress, ...], chunks: Mapping[bytes, ChunkState],
                 paths: tuple[str, ...], files: Mapping[str, _File],
                 sessions: tuple[tuple[int, _Session], ...]) -> None:
        self._members = members
        self._chunks = MappingProxyType(chunks)
        self._paths = tuple(paths)
        self._files = MappingProxyType(files)
        self._sessions = sessions

    def frames(self) -> Iterator[bytes]:
        """The snapshot as CODEC frames: the header, one frame per member, the chunk map and
        the namespace in bounded batches, then one frame per session."""
        encode = CODEC.encode
        yield encode(SnapshotHeader(SNAPSHOT_FORMAT, len(self._members), len(self._chunks),
                                    len(self._paths), len(self._sessions)))
        for member in self._members:
            yield encode(member)
        chunks = iter(self._chunks.items())
        while batch := list(itertools.islice(chunks, CHUNKS_PER_BATCH)):
            yield encode(_chunk_batch(batch))
        files = self._files
        paths: list[str] = []
        records: list[_File] = []
        pending = 0
        for path in self._paths:
            rec = files[path]
            paths.append(path)
            records.append(rec)
            # Its chunk count, the path in characters (cheaper than UTF-8
            # bytes and close enough for a bound), a separator, the record.
            pending += 5 + len(path) + len(rec)
            if pending >= FILE_BATCH_BYTES:
                yield encode(FileBatch(tuple(paths), tuple(records)))
                paths.clear()
                records.clear()
                pending = 0
        if paths:
            yield encode(FileBatch(tuple(paths), tuple(records)))
        for client_id, session in self._sessions:
            yield encode(_session_record(client_id, session))


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


def _session_record(client_id: int, s: _Session) -> Any:
    if s.error is not None:
        return SessionErrorRecord(client_id, s.seq, s.index, s.error[0], s.error[1])
    if isinstance(s.result, FileInfo):
        return SessionPutRecord(client_id, s.seq, s.index, s.result)
    return SessionIndexRecord(client_id, s.seq, s.index, s.result)


# --- the state machine -----------------------------------------------------------------------

class FileStoreStateMachine:
    """Applies committed entries to the namespace, the chunk map and the client sessions.

    ``on_chunks_removed`` (set by the node) is called with the hashes a
    CollectChunksCommand removed, so the node deletes its local copies.
    ChunkHoldersCommand (repair) replaces a chunk's holders only if they are
    still the ones it names.  Bytes held per node (:meth:`usage`, which
    placement reads) are kept up to date from the chunk map as it changes.
    ``on_inline_chunk`` is called with (hash, data, holders) when a
    PutInlineCommand applies, so each holder writes the bytes it carried.
    """

    def __init__(self, directory: MemberDirectory | None = None, *, max_sessions: int = 10000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.directory = directory if directory is not None else MemberDirectory({})
        self.max_sessions = max_sessions
        self.on_chunks_removed: Callable[[tuple[str, ...]], object] | None = None
        self.on_inline_chunk: Callable[[str, bytes, tuple[str, ...]], object] | None = None
        self._membership = MembershipStateMachine(self.directory)
        self._handlers: dict[type, Callable[[Any, int], Any]] = {
            PutFileCommand: self._apply_put,
            PutInlineCommand: self._apply_put_inline,
            RemoveFileCommand: self._apply_remove,
            CollectChunksCommand: self._apply_collect,
            ChunkHoldersCommand: self._apply_holders,
        }
        self._reset()

    def _reset(self) -> None:
        self._files: dict[str, _File] = {}
        self._paths = _SortedPaths()
        self._chunks: dict[bytes, ChunkState] = {}
        self._unreferenced: set[bytes] = set()
        self._sessions: OrderedDict[int, _Session] = OrderedDict()
        self._holder_sets: dict[frozenset[str], frozenset[str]] = {}
        self._file_bytes = 0
        self._usage: Counter[str] = Counter()

    # -- apply -------------------------------------------------------------------------

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry; returns its result or raises a FileStoreError."""
        if entry.type == EntryType.CONF_CHANGE:
            try:
                return self._membership.apply(entry)
            except ValueError as exc:
                raise InvalidCommand(f"entry {entry.index}: bad membership change: {exc}") from None
        if not entry.data:
            return None  # a new leader's no-op
        try:
            command = CODEC.decode(entry.data)
        except CodecError as exc:
            raise InvalidCommand(f"entry {entry.index} holds no command: {exc}") from None
        if isinstance(command, ProbeCommand):
            return entry.index
        handler = self._handlers.get(type(command))
        if handler is None:
            raise InvalidCommand(f"entry {entry.index}: {type(command).__name__} is not a command")
        return handler(command, entry.index)

    def _with_session(self, client_id: int, seq: int, index: int, run: Callable[[], Any]) -> Any:
        """Apply ``run`` at most once per (client_id, seq); a retry gets the first outcome.

        A ChunkMissing refusal is not recorded: nothing was applied and the
        client is told to retry the very same seq.
        """
        if client_id == 0:
            return run()
        session = self._sessions.get(client_id)
        if session is not None:
            if seq < session.seq:
                raise StaleRequest(f"client {client_id:x}: seq {seq} is older than its last, {session.seq}")
            if seq == session.seq:
                self._remember(client_id, _Session(seq, index, session.result, session.error))
                return session.replay()
        try:
            result = run()
        except FileStoreError as exc:
            if exc.code != UNAVAILABLE:
                self._remember(client_id, _Session(seq, index, error=(type(exc).__name__, str(exc))))
            raise
        self._remember(client_id, _Session(seq, index, result))
        return result

    def _remember(self, client_id: int, session: _Session) -> None:
        sessions = self._sessions
        sessions[client_id] = session
        sessions.move_to_end(client_id)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)

    def _apply_put(self, cmd: PutFileCommand, index: int) -> FileInfo:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._put(cmd, index))

    def _apply_put_inline(self, cmd: PutInlineCommand, index: int) -> FileInfo:
        """A small file carried in the entry: a put of one chunk that every holder writes now."""
        digest = hashlib.sha256(cmd.data).hexdigest()
        chunks = (ChunkRef(digest, len(cmd.data), tuple(cmd.holders)),) if cmd.data else ()
        if cmd.data and not cmd.holders:
            raise InvalidCommand(f"entry {index}: an inline file needs holders")
        as_put = PutFileCommand(cmd.client_id, cmd.seq, cmd.modified_ns, cmd.path, len(cmd.data),
                                digest, chunks)
        fresh = self._sessions.get(cmd.client_id) is None or \
            self._sessions[cmd.client_id].seq != cmd.seq or cmd.client_id == 0
        info = self._apply_put(as_put, index)
        if cmd.data and fresh and self.on_inline_chunk is not None:
            try:
                self.on_inline_chunk(digest, cmd.data, tuple(cmd.holders))
            except Exception:  # noqa: BLE001 -- a local write failure must not make nodes diverge
                log.failure("on_inline_chunk failed for entry {index}", index=index)
        return info

    def _apply_remove(self, cmd: RemoveFileCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._remove(cmd, index))

    def _put(self, cmd: PutFileCommand, index: int) -> FileInfo:
        path = _command_path(cmd.path, index)
        # Check everything first: a refusal must leave the state untouched.
        fresh: dict[bytes, tuple[int, frozenset[str]]] = {}
        digests: list[bytes] = []
        total = 0
        for ref in cmd.chunks:
            digest = bytes.fromhex(ref.hash)
            known = self._chunks.get(digest)
            size = known.size if known is not None else fresh.get(digest, (None,))[0]
            if size is not None and size != ref.size:
                raise InvalidCommand(f"entry {index}: chunk {ref.hash} is {size} bytes, not {ref.size}")
            if ref.holders:
                earlier = fresh.get(digest, (0, frozenset()))[1]
                fresh[digest] = (ref.size, earlier | frozenset(ref.holders))
            elif known is None and digest not in fresh:
                raise ChunkMissing(f"chunk {ref.hash} of {path} is no longer stored; upload it again")
            digests.append(digest)
            total += ref.size
        if total != cmd.size:
            raise InvalidCommand(f"entry {index}: {path} is {cmd.size} bytes but its chunks add up to {total}")
        old = self._files.get(path)
        delta = Counter(digests)
        if old is not None:
            delta.subtract(_digests(file_chunks(old)))
        # Counter keeps first-seen order (new chunks, then the old file's), so
        # the chunk map's order, and so the snapshot's bytes, match on every node.
        for digest in delta:
            known = self._chunks.get(digest)
            if known is None:
                size, holders = fresh[digest]
                refs = 0
            else:
                size, holders, refs = known.size, known.holders, known.refs
                if digest in fresh:
                    holders = holders | fresh[digest][1]
            self._set_chunk(digest, ChunkState(size, self._shared(holders), refs + delta[digest]))
        rec = pack_file(cmd.size, bytes.fromhex(cmd.sha256), cmd.modified_ns, index, b"".join(digests))
        if old is None:
            self._paths.add(path)
        else:
            self._file_bytes -= file_size(old)
        self._files[path] = rec
        self._file_bytes += file_size(rec)
        return self._info(path, rec)

    def _remove(self, cmd: RemoveFileCommand, index: int) -> int:
        path = _command_path(cmd.path, index)
        old = self._files.pop(path, None)
        if old is None:
            raise NotFound(f"{path} does not exist")
        self._paths.remove(path)
        self._file_bytes -= file_size(old)
        for digest, count in Counter(_digests(file_chunks(old))).items():
            chunk = self._chunks[digest]
            self._set_chunk(digest, ChunkState(chunk.size, chunk.holders, chunk.refs - count))
        return index

    def _apply_collect(self, cmd: CollectChunksCommand, index: int) -> tuple[str, ...]:
        removed = []
        for text in cmd.hashes:
            digest = bytes.fromhex(text)
            chunk = self._chunks.get(digest)
            if chunk is not None and chunk.refs == 0:
                del self._chunks[digest]
                self._unreferenced.discard(digest)
                self._count_usage(chunk, -1)
                removed.append(text)
        hashes = tuple(removed)
        if hashes and self.on_chunks_removed is not None:
            try:
                self.on_chunks_removed(hashes)
            except Exception:  # noqa: BLE001 -- the observer's failure must not make nodes diverge
                log.failure("on_chunks_removed failed for entry {index}", index=index)
        return hashes

    def _apply_holders(self, cmd: ChunkHoldersCommand, index: int) -> int:
        """Repair's holder change: applied only if the entry still has the holders it was decided on."""
        try:
            digest = bytes.fromhex(cmd.hash)
        except ValueError:
            raise InvalidCommand(f"entry {index}: {cmd.hash!r} is not a chunk hash") from None
        new = frozenset(cmd.holders)
        if not new or len(new) != len(cmd.holders):
            raise InvalidCommand(f"entry {index}: chunk {cmd.hash} needs distinct holders, got {cmd.holders}")
        chunk = self._chunks.get(digest)
        if chunk is None:
            raise StaleChange(f"chunk {cmd.hash} is no longer in the chunk map")
        if chunk.holders != frozenset(cmd.expected):
            raise StaleChange(f"chunk {cmd.hash} is held by {sorted(chunk.holders)} now, "
                              f"not {sorted(cmd.expected)}")
        self._set_chunk(digest, ChunkState(chunk.size, self._shared(new), chunk.refs))
        return index

    def _count_usage(self, chunk: ChunkState, sign: int) -> None:
        """Add (sign 1) or take away (sign -1) a chunk's bytes from each of its holders' totals."""
        usage = self._usage
        for holder in chunk.holders:
            left = usage[holder] + sign * chunk.size
            if left:
                usage[holder] = left
            else:
                del usage[holder]

    def _set_chunk(self, digest: bytes, chunk: ChunkState) -> None:
        if chunk.refs < 0:
            raise AssertionError(f"chunk {digest.hex()} would have {chunk.refs} references")
        old = self._chunks.get(digest)
        if old is None or old.holders != chunk.holders:
            if old is not None:
                self._count_usage(old, -1)
            self._count_usage(chunk, 1)
        self._chunks[digest] = chunk
        if chunk.refs == 0:
            self._unreferenced.add(digest)
        else:
            self._unreferenced.discard(digest)

    def _shared(self, holders: frozenset[str]) -> frozenset[str]:
        """One object per distinct holder set: most chunks share a handful of sets."""
        return self._holder_sets.setdefault(holders, holders)

    # -- queries (reactor thread) ------------------------------------------------------

    def get(self, path: str) -> FileInfo | None:
        """The file at ``path`` (a normal form) with its chunks' current holders, or None."""
        rec = self._files.get(path)
        return None if rec is None else self._info(path, rec)

    def list(self, prefix: str = ROOT, *, with_chunks: bool = True) -> list[FileInfo]:
        """The files at or below the folder ``prefix``, sorted by path.

        ``with_chunks=False`` leaves ``chunks`` empty (as ``ls`` sends them,
        see :meth:`listing`) and saves building a ChunkRef per chunk.  Raises InvalidPath
        for a prefix that is not valid.
        """
        paths = self._paths_under(normalize_prefix(prefix))
        files = self._files
        if with_chunks:
            return [self._info(path, files[path]) for path in paths]
        return [_bare_info(path, files[path]) for path in paths]

    def listing(self, prefix: str = ROOT) -> "Listing":
        """The files at or below the folder ``prefix`` as they are now, sorted by path.

        ``ls`` builds a million files' FileInfos page by page from it,
        letting the reactor run between pages, while later entries change
        the namespace: a file's record is immutable bytes, so a copy of the
        path-to-record map freezes the listing (about 0.1 s per million
        files; building every FileInfo at once took 10 s).  Raises
        InvalidPath for a prefix that is not valid.
        """
        paths = self._paths_under(normalize_prefix(prefix))
        files = self._files
        if 4 * len(paths) >= len(files):
            return Listing(paths, dict(files))  # a dict copy is the cheapest way to take most of it
        return Listing(paths, {path: files[path] for path in paths})

    def _paths_under(self, prefix: str) -> list[str]:
        """The paths at or below the folder ``prefix`` (a normal form), sorted."""
        if prefix == ROOT:
            return list(self._paths)
        below = prefix + "/"
        found = [prefix] if prefix in self._files else []
        for path in self._paths.from_key(below):
            if not path.startswith(below):
                break
            found.append(path)
        return found

    def chunk(self, hash: str) -> ChunkState | None:
        """The chunk map entry of ``hash`` (hex SHA-256), or None."""
        try:
            digest = bytes.fromhex(hash)
        except (TypeError, ValueError):
            return None
        return self._chunks.get(digest)

    def usage(self) -> dict[str, int]:
        """Bytes each node holds according to the chunk map (placement fills the least used first).

        Derived from the chunk map alone, so every node computes the same
        figures from the same entries, and a snapshot need not carry them.
        """
        return dict(self._usage)

    def chunk_digests(self) -> list[bytes]:
        """Every chunk's raw digest, as a list copy: repair and scrub walk it in slices."""
        return list(self._chunks)

    def chunk_by_digest(self, digest: bytes) -> ChunkState | None:
        """The chunk map entry of a raw digest (see :meth:`chunk_digests`), or None."""
        return self._chunks.get(digest)

    def unreferenced_chunks(self) -> list[str]:
        """Hashes of the chunks no file refers to (candidates for CollectChunks), sorted."""
        return sorted(d.hex() for d in self._unreferenced)

    def stats(self) -> dict[str, int]:
        """Counts for status output: files, chunks, bytes (of the files' contents), sessions."""
        return {"files": len(self._files), "chunks": len(self._chunks),
                "bytes": self._file_bytes, "sessions": len(self._sessions)}

    def _info(self, path: str, rec: _File) -> FileInfo:
        chunks = self._chunks
        refs = []
        for digest in _digests(file_chunks(rec)):
            chunk = chunks[digest]
            refs.append(ChunkRef(digest.hex(), chunk.size, tuple(sorted(chunk.holders))))
        return _bare_info(path, rec, tuple(refs))

    def digest(self) -> str:
        """A SHA-256 over a canonical encoding of the whole state (members included).

        Two nodes that applied the same entries have the same digest,
        whatever their history (restored from a snapshot or not).  O(n log n):
        for tests and diagnostics, not for the reactor on a large namespace.
        """
        h = hashlib.sha256()
        frozen = self.freeze()
        canonical = FrozenState(frozen._members, dict(sorted(self._chunks.items())),
                                frozen._paths, self._files, frozen._sessions)
        for frame in canonical.frames():
            h.update(len(frame).to_bytes(4, "big"))
            h.update(frame)
        return h.hexdigest()

    # -- snapshots -----------------------------------------------------------------------

    def freeze(self) -> FrozenState:
        """An immutable image of the current state: shallow copies only, no encoding."""
        members = tuple(
            MemberAddress(node_id, str(m.peer), str(m.client))
            for node_id, m in sorted(self.directory.members().items()))
        return FrozenState(members, dict(self._chunks), self._paths.snapshot(), dict(self._files),
                           tuple(self._sessions.items()))

    def restore(self, frames: Iterable[bytes]) -> None:
        """Replace the whole state with a snapshot's, checking it thoroughly first.

        Raises CodecError for frames that do not decode and
        SnapshotFormatError for frames that do not add up to a consistent
        state; either way the current state is left as it was.  The
        snapshot's members are added to the directory.  Equivalent to
        ``install(read_snapshot(frames))``; a node with a large namespace
        should call :func:`read_snapshot` in a thread and only
        :meth:`install` on the reactor.
        """
        self.install(read_snapshot(frames))

    def install(self, snapshot: LoadedSnapshot) -> None:
        """Adopt a snapshot read by :func:`read_snapshot`: O(n) pointer work, no decoding.

        Keeps the newest ``max_sessions`` sessions if the snapshot has more.
        A LoadedSnapshot is installed once: its containers become the live state.
        """
        if snapshot.installed:
            raise ValueError("this snapshot was already installed; read it again")
        snapshot.installed = True
        self._reset()
        self._files = snapshot.files
        self._paths = _SortedPaths(snapshot.paths)
        self._file_bytes = snapshot.file_bytes
        self._chunks = snapshot.chunks
        self._unreferenced = snapshot.unreferenced
        self._holder_sets = snapshot.holder_sets
        self._usage = snapshot.usage
        for client_id, session in snapshot.sessions[-self.max_sessions:]:
            self._sessions[client_id] = session
        for node_id, member in snapshot.members.items():
            self.directory.add(node_id, member)


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


class Listing:
    """A frozen listing of files (see :meth:`FileStoreStateMachine.listing`)."""

    __slots__ = ("paths", "_records")

    def __init__(self, paths: list[str], records: Mapping[str, _File]) -> None:
        self.paths = paths
        self._records = records

    def __len__(self) -> int:
        return len(self.paths)

    def page(self, start: int, stop: int) -> list[FileInfo]:
        """FileInfos, without chunks, of the files ``start`` to ``stop - 1`` in path order."""
        records = self._records
        return [_bare_info(path, records[path]) for path in self.paths[start:stop]]


def _bare_info(path: str, rec: _File, chunks: tuple[ChunkRef, ...] = ()) -> FileInfo:
    size, modified_ns, version, sha = file_head(rec)
    return FileInfo(path, size, sha.hex(), modified_ns, version, chunks)


def _command_path(text: str, index: int) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise InvalidCommand(f"entry {index}: {exc}") from None


_PATH_FAULTS = ("//", "/\x00", "/./", "/.\x00", "/../", "/..\x00")
_SIZE = struct.Struct(">Q")
_FIRST = operator.itemgetter(0)
_REFS = operator.itemgetter(2)
_CHUNK_DIGESTS = operator.itemgetter(slice(FILE_HEAD_BYTES, None))
_ONE_CHUNK_FILE = FILE_HEAD_BYTES + DIGEST_BYTES


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
        self.header: SnapshotHeader | None = None
        self.members: dict[str, Member] = {}
        self.chunks: dict[bytes, ChunkState] = {}
        self.files: dict[str, _File] = {}
        self.paths: list[str] = []
        self.file_bytes = 0
        self.unreferenced: set[bytes] = set()
        self.holder_sets: dict[frozenset[str], frozenset[str]] = {}
        self.usage: Counter[str] = Counter()
        self.sessions: list[tuple[int, _Session]] = []
        self._session_ids: set[int] = set()
        self._refs: Counter[bytes] = Counter()
        self.installed = False

    def feed(self, record: object) -> None:
        if self.header is None:
            if not isinstance(record, SnapshotHeader):
                raise SnapshotFormatError(f"a snapshot starts with its header, not {type(record).__name__}")
            if record.format not in READABLE_FORMATS:
                raise SnapshotFormatError(f"unknown snapshot format {record.format}")
            self.header = record
            return
        kind = type(record)
        if kind is FileBatch:
            self._files(record)
        elif kind is ChunkBatch:
            self._chunks(record)
        elif kind is MemberAddress:
            self._member(record)
        elif kind in (SessionPutRecord, SessionIndexRecord, SessionErrorRecord):
            self._session(record)
        elif kind is ChunkRecord:
            self._chunks(_chunk_batch_of_one(record))
        elif kind is FileRecord:
            self._files(_file_batch_of_one(record))
        else:
            raise SnapshotFormatError(f"{kind.__name__} is not a snapshot record")

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
        digests, sizes, refs, indexes = zip(*batch.chunks)
        if len(sets) == 1:
            holders = itertools.repeat(sets[0])
            set_bytes = [sum(sizes)]
        else:
            holders = map(sets.__getitem__, indexes)
            set_bytes = [0] * len(sets)
            for i, size in zip(indexes, sizes):
                set_bytes[i] += size
        chunks.update(zip(digests, map(_new_chunk_state, zip(sizes, holders, refs))))
        self.unreferenced.update(itertools.compress(digests, map(operator.not_, refs)))
        if len(chunks) != expected:
            twice = [d for d, n in Counter(row[0] for row in batch.chunks).items() if n > 1]
            raise SnapshotFormatError(f"chunk {twice[0].hex()} appears twice" if twice else
                                      f"{expected - len(chunks)} chunks of a batch appear in an earlier one")
        usage = self.usage
        for holders, total in zip(sets, set_bytes):
            for holder in holders:
                usage[holder] += total

    def _files(self, batch: FileBatch) -> None:
        paths, records = batch.paths, batch.files
        if not paths:
            return
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
        if min(map(len, records)) == max(map(len, records)) == _ONE_CHUNK_FILE:
            # The common batch: one chunk per file, checked column by column in C.
            digests = list(map(_CHUNK_DIGESTS, records))
            found = list(map(chunks.get, digests))
            if None in found or list(map(_FIRST, found)) != sizes:
                for path, rec in zip(paths, records):
                    self._check_file(path, rec)
            self._refs.update(digests)
        else:
            for path, rec in zip(paths, records):
                self._refs.update(self._check_file(path, rec))
        self.file_bytes += sum(sizes)
        self.files.update(zip(paths, records))
        self.paths.extend(paths)

    def _check_file(self, path: str, rec: _File) -> list[bytes]:
        """The digests of a file's chunks, once checked to be in the map and to add up to its size."""
        digests = list(_digests(file_chunks(rec)))
        total = 0
        for digest in digests:
            chunk = self.chunks.get(digest)
            if chunk is None:
                raise SnapshotFormatError(f"{path} refers to chunk {digest.hex()}, which is not in the map")
            total += chunk.size
        if total != file_size(rec):
            raise SnapshotFormatError(f"{path} is {file_size(rec)} bytes but its chunks add up to {total}")
        return digests

    def _session(self, rec: Any) -> None:
        if rec.client_id == 0:
            raise SnapshotFormatError("a session of client 0 (no session)")
        if rec.client_id in self._session_ids:
            raise SnapshotFormatError(f"client {rec.client_id:x} has two sessions")
        self._session_ids.add(rec.client_id)
        if isinstance(rec, SessionErrorRecord):
            if rec.error not in _ERRORS:
                raise SnapshotFormatError(f"session error {rec.error!r} is not a FileStoreError")
            session = _Session(rec.seq, rec.index, error=(rec.error, rec.message))
        elif isinstance(rec, SessionPutRecord):
            session = _Session(rec.seq, rec.index, rec.info)
        else:
            session = _Session(rec.seq, rec.index, rec.value)
        self.sessions.append((rec.client_id, session))

    def finish(self) -> None:
        header = self.header
        if header is None:
            raise SnapshotFormatError("empty snapshot: no header")
        counts = {"members": len(self.members), "chunks": len(self.chunks),
                  "files": len(self.files), "sessions": len(self.sessions)}
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
