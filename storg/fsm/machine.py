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

import builtins
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from storg.fsm.errors import (
    ChunkMissing,
    Conflict,
    FileStoreError,
    InvalidCommand,
    NotFound,
    StaleChange,
    StaleRequest,
)
from storg.fsm.members import MemberDirectory, MembershipStateMachine
from storg.fsm.objects import ObjectCommands, S3KeyState
from storg.fsm.records import (
    S3KeyRecord,
    effective_etag,
    file_chunks,
    file_head,
    file_size,
    pack_file,
)
from storg.fsm.snapshot import FrozenState, LoadedSnapshot, read_snapshot
from storg.fsm.sorted_paths import SortedPaths
from storg.fsm.state import Change, ChunkState, Listing, PackedFile, Session, bare_info, chunk_digests_of
from storg.fsm.tree import TreeCommands
from storg.paths import ROOT, InvalidPath, normalize_path, normalize_prefix
from storg.raft.types import Entry, EntryType
from storg.wire import (
    CODEC,
    UNAVAILABLE,
    CodecError,
    MemberAddress,
    ProbeCommand,
)
from storg.wire.batch import PutInlineBatchCommand
from storg.wire.chunks import (
    ChunkHoldersCommand,
    CollectChunksCommand,
    PutFileCommand,
    PutInlineCommand,
    RemoveFileCommand,
)
from storg.wire.files import ChunkRef, FileInfo
from storg.wire.objects import (
    ComposeCommand,
    CopyAttrsCommand,
    PutObjectCommand,
    S3KeyCreateCommand,
    S3KeyRevokeCommand,
)
from storg.wire.tree import (
    WATCH_CREATE,
    WATCH_DELETE,
    WATCH_UPDATE,
    ConditionalPutCommand,
    CopyCommand,
    MoveCommand,
    RemoveTreeCommand,
)

log = Logger(namespace="storg.fsm")


class FileStoreStateMachine(TreeCommands, ObjectCommands):
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
        self.on_entry: Callable[[int, builtins.list[Change]], object] | None = None
        """Called after every applied entry with its index and the namespace changes it made
        (an empty list for most: no-ops, refusals, chunk map changes); the node's watch ring."""
        self._changes: builtins.list[Change] | None = None
        self.on_install: Callable[[], object] | None = None
        """Called after a snapshot replaced the state: watchers cannot see across it."""
        self._membership = MembershipStateMachine(self.directory)
        self._handlers: dict[type, Callable[[Any, int], Any]] = {
            PutFileCommand: self._apply_put,
            PutInlineCommand: self._apply_put_inline,
            RemoveFileCommand: self._apply_remove,
            CollectChunksCommand: self._apply_collect,
            ChunkHoldersCommand: self._apply_holders,
            MoveCommand: self._apply_move,
            CopyCommand: self._apply_copy,
            RemoveTreeCommand: self._apply_remove_tree,
            ConditionalPutCommand: self._apply_conditional,
            PutInlineBatchCommand: self._apply_put_batch,
            PutObjectCommand: self._apply_conditional,
            CopyAttrsCommand: self._apply_copy_attrs,
            ComposeCommand: self._apply_compose,
            S3KeyCreateCommand: self._apply_s3_key_create,
            S3KeyRevokeCommand: self._apply_s3_key_revoke,
        }
        self._reset()

    def _reset(self) -> None:
        self._files: dict[str, PackedFile] = {}
        self._paths = SortedPaths()
        self._chunks: dict[bytes, ChunkState] = {}
        self._unreferenced: set[bytes] = set()
        self._sessions: OrderedDict[int, Session] = OrderedDict()
        self._holder_sets: dict[frozenset[str], frozenset[str]] = {}
        self._file_bytes = 0
        self._usage: Counter[str] = Counter()
        self._s3_keys: dict[str, S3KeyState] = {}

    # -- apply -------------------------------------------------------------------------

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry; returns its result or raises a FileStoreError."""
        if self.on_entry is None:
            return self._apply(entry)
        changes: builtins.list[Change] = []
        self._changes = changes
        try:
            return self._apply(entry)
        finally:
            self._changes = None
            try:
                self.on_entry(entry.index, changes)
            except Exception:  # noqa: BLE001 -- the observer's failure must not make nodes diverge
                log.failure("on_entry failed for entry {index}", index=entry.index)

    def _apply(self, entry: Entry) -> Any:
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
                self._remember(client_id, Session(seq, index, session.result, session.error))
                return session.replay()
        try:
            result = run()
        except FileStoreError as exc:
            if exc.code != UNAVAILABLE:
                self._remember(client_id, Session(seq, index, error=(type(exc).__name__, str(exc))))
            raise
        self._remember(client_id, Session(seq, index, result))
        return result

    def _remember(self, client_id: int, session: Session) -> None:
        sessions = self._sessions
        sessions[client_id] = session
        sessions.move_to_end(client_id)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)

    def _apply_put(self, cmd: PutFileCommand, index: int, condition: Condition | None = None,
                   ) -> FileInfo:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._put(cmd, index, condition))

    def _apply_conditional(self, cmd: Condition, index: int) -> FileInfo:
        """A put applied only if its condition holds now (compare-and-swap at apply, in log order).

        The condition is checked inside the inner put's session, so a retry
        of a refused conditional put is refused again, never applied late.
        A PutObjectCommand also carries the attributes the file gets.
        """
        try:
            inner = CODEC.decode(cmd.command)
        except CodecError as exc:
            raise InvalidCommand(f"entry {index}: a conditional put holds no command: {exc}") from None
        if cmd.if_match:
            try:
                if len(bytes.fromhex(cmd.if_match)) != 32:
                    raise ValueError
            except ValueError:
                raise InvalidCommand(f"entry {index}: {cmd.if_match!r} is not a SHA-256") from None
        if isinstance(inner, PutFileCommand):
            return self._apply_put(inner, index, cmd)
        if isinstance(inner, PutInlineCommand):
            return self._apply_put_inline(inner, index, cmd)
        raise InvalidCommand(f"entry {index}: {type(inner).__name__} cannot be conditional")

    def _check_condition(self, path: str, condition: Condition | None) -> None:
        if condition is None:
            return
        old = self._files.get(path)
        if condition.if_absent and old is not None:
            raise Conflict(f"{path} already exists (put --if-absent)")
        etag = getattr(condition, "if_match_etag", "")
        if etag:
            if old is None:
                raise Conflict(f"{path} does not exist, so it cannot match ETag {etag}")
            stored = effective_etag(old)
            if stored != etag:
                raise Conflict(f"{path} has ETag {stored or '(none)'}, not {etag}")
        if condition.if_match:
            if old is None:
                raise Conflict(f"{path} does not exist, so it cannot match {condition.if_match} "
                               f"(put --if-match)")
            sha = file_head(old)[3].hex()
            if sha != condition.if_match.lower():
                raise Conflict(f"{path} has SHA-256 {sha}, not {condition.if_match} (put --if-match)")

    def _apply_put_inline(self, cmd: PutInlineCommand, index: int,
                          condition: Condition | None = None) -> FileInfo:
        """A small file carried in the entry: a put of one chunk that every holder writes now."""
        digest = hashlib.sha256(cmd.data).hexdigest()
        chunks = (ChunkRef(digest, len(cmd.data), tuple(cmd.holders)),) if cmd.data else ()
        if cmd.data and not cmd.holders:
            raise InvalidCommand(f"entry {index}: an inline file needs holders")
        as_put = PutFileCommand(cmd.client_id, cmd.seq, cmd.modified_ns, cmd.path, len(cmd.data),
                                digest, chunks)
        fresh = self._sessions.get(cmd.client_id) is None or \
            self._sessions[cmd.client_id].seq != cmd.seq or cmd.client_id == 0
        info = self._apply_put(as_put, index, condition)
        if cmd.data and fresh and self.on_inline_chunk is not None:
            try:
                self.on_inline_chunk(digest, cmd.data, tuple(cmd.holders))
            except Exception:  # noqa: BLE001 -- a local write failure must not make nodes diverge
                log.failure("on_inline_chunk failed for entry {index}", index=index)
        return info

    def _apply_put_batch(self, cmd: PutInlineBatchCommand, index: int) -> int:
        """Many small files in one entry (``put -r``): all of them are stored, or none; returns the entry's index.

        Each inner command is a PutObjectCommand (the file's attributes: its
        ETag) around an inline put.  Every one is decoded and checked before
        the first one applies, so a refusal leaves the state untouched.  An inline put
        that passed these checks cannot be refused by ``_put`` (its one
        chunk's size is its digest's), so the applies that follow cannot
        stop half way.  The inner commands have no session (client 0): the
        batch's session makes a retried batch replay its first outcome.
        """

        def run() -> int:
            puts: builtins.list[tuple[PutObjectCommand, PutInlineCommand]] = []
            for body in cmd.commands:
                try:
                    wrapper = CODEC.decode(body)
                    inner = CODEC.decode(wrapper.command) if isinstance(wrapper, PutObjectCommand) else None
                except CodecError as exc:
                    raise InvalidCommand(f"entry {index}: a batch holds no command: {exc}") from None
                if not isinstance(inner, PutInlineCommand) or inner.client_id != 0 or wrapper.if_absent \
                        or wrapper.if_match or wrapper.if_match_etag:
                    raise InvalidCommand(f"entry {index}: a batch holds only unconditional inline puts "
                                         f"without a session")
                _command_path(inner.path, index)
                if inner.data and not inner.holders:
                    raise InvalidCommand(f"entry {index}: an inline file needs holders")
                self._attrs_tail(wrapper.attrs, len(inner.data), index)  # what _put would refuse, refused first
                puts.append((wrapper, inner))
            for wrapper, inner in puts:
                self._apply_put_inline(inner, index, wrapper)
            return index

        return self._with_session(cmd.client_id, cmd.seq, index, run)

    def _apply_remove(self, cmd: RemoveFileCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._remove(cmd, index))

    def _put(self, cmd: PutFileCommand, index: int, condition: Condition | None = None,
             ) -> FileInfo:
        path = _command_path(cmd.path, index)
        self._check_condition(path, condition)
        tail = b""
        if isinstance(condition, PutObjectCommand):
            tail = self._attrs_tail(condition.attrs, cmd.size, index)
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
            delta.subtract(chunk_digests_of(file_chunks(old)))
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
        rec = pack_file(cmd.size, bytes.fromhex(cmd.sha256), cmd.modified_ns, index, b"".join(digests), tail)
        if old is None:
            self._paths.add(path)
        else:
            self._file_bytes -= file_size(old)
        self._files[path] = rec
        self._file_bytes += file_size(rec)
        if self._changes is not None:
            self._changes.append(Change(WATCH_CREATE if old is None else WATCH_UPDATE, path, "", cmd.size,
                                        bytes.fromhex(cmd.sha256)))
        return self._info(path, rec)

    def _remove(self, cmd: RemoveFileCommand, index: int) -> int:
        path = _command_path(cmd.path, index)
        old = self._files.pop(path, None)
        if old is None:
            raise NotFound(f"{path} does not exist")
        self._paths.remove(path)
        self._file_bytes -= file_size(old)
        for digest, count in Counter(chunk_digests_of(file_chunks(old))).items():
            chunk = self._chunks[digest]
            self._set_chunk(digest, ChunkState(chunk.size, chunk.holders, chunk.refs - count))
        if self._changes is not None:
            self._changes.append(Change(WATCH_DELETE, path))
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

    def list(self, prefix: str = ROOT, *, with_chunks: bool = True) -> builtins.list[FileInfo]:
        """The files at or below the folder ``prefix``, sorted by path.

        ``with_chunks=False`` leaves ``chunks`` empty (as ``ls`` sends them,
        see :meth:`listing`) and saves building a ChunkRef per chunk.  Raises InvalidPath
        for a prefix that is not valid.
        """
        paths = self._paths_under(normalize_prefix(prefix))
        files = self._files
        if with_chunks:
            return [self._info(path, files[path]) for path in paths]
        return [bare_info(path, files[path]) for path in paths]

    def listing(self, prefix: str = ROOT) -> Listing:
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

    def _paths_under(self, prefix: str) -> builtins.list[str]:
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

    def chunk_digests(self) -> builtins.list[bytes]:
        """Every chunk's raw digest, as a list copy: repair and scrub walk it in slices."""
        return list(self._chunks)

    def chunk_by_digest(self, digest: bytes) -> ChunkState | None:
        """The chunk map entry of a raw digest (see :meth:`chunk_digests`), or None."""
        return self._chunks.get(digest)

    def unreferenced_chunks(self) -> builtins.list[str]:
        """Hashes of the chunks no file refers to (candidates for CollectChunks), sorted."""
        return sorted(d.hex() for d in self._unreferenced)

    def stats(self) -> dict[str, int]:
        """Counts for status output: files, chunks, bytes (of the files' contents), sessions."""
        return {"files": len(self._files), "chunks": len(self._chunks),
                "bytes": self._file_bytes, "sessions": len(self._sessions)}

    def _info(self, path: str, rec: PackedFile) -> FileInfo:
        chunks = self._chunks
        refs = []
        for digest in chunk_digests_of(file_chunks(rec)):
            chunk = chunks[digest]
            refs.append(ChunkRef(digest.hex(), chunk.size, tuple(sorted(chunk.holders))))
        return bare_info(path, rec, tuple(refs))

    def digest(self) -> str:
        """A SHA-256 over a canonical encoding of the whole state (members included).

        Two nodes that applied the same entries have the same digest,
        whatever their history (restored from a snapshot or not).  O(n log n):
        for tests and diagnostics, not for the reactor on a large namespace.
        """
        h = hashlib.sha256()
        for frame in self.freeze().canonical().frames():
            h.update(len(frame).to_bytes(4, "big"))
            h.update(frame)
        return h.hexdigest()

    # -- snapshots -----------------------------------------------------------------------

    def freeze(self) -> FrozenState:
        """An immutable image of the current state: shallow copies only, no encoding."""
        members = tuple(
            MemberAddress(node_id, str(m.peer), str(m.client))
            for node_id, m in sorted(self.directory.members().items()))
        keys = tuple(S3KeyRecord(key_id, k.name, k.role, k.secret, k.created_ns)
                     for key_id, k in sorted(self._s3_keys.items()))
        return FrozenState(members, dict(self._chunks), self._paths.snapshot(), dict(self._files),
                           tuple(self._sessions.items()), keys)

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
        self._paths = SortedPaths(snapshot.paths)
        self._file_bytes = snapshot.file_bytes
        self._chunks = snapshot.chunks
        self._unreferenced = snapshot.unreferenced
        self._holder_sets = snapshot.holder_sets
        self._usage = snapshot.usage
        for client_id, session in snapshot.sessions[-self.max_sessions:]:
            self._sessions[client_id] = session
        for node_id, member in snapshot.members.items():
            self.directory.add(node_id, member)
        self._s3_keys = {key_id: S3KeyState(k.name, k.role, k.secret, k.created_ns)
                         for key_id, k in snapshot.s3_keys.items()}
        if self.on_install is not None:
            self.on_install()


Condition = ConditionalPutCommand | PutObjectCommand
"""What a conditional put is wrapped in: the old command (conditions only) or the one with attributes."""


def _command_path(text: str, index: int) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise InvalidCommand(f"entry {index}: {exc}") from None
