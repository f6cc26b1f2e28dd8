"""Tree commands of the state machine: move, copy and remove a whole folder in one entry.

Each is decided completely before anything changes (a refusal leaves the
state untouched, as for every command) and then done in one apply: ``ls``
takes its frozen listing between two applies, on the same thread, so a
reader sees the whole tree before the command or the whole tree after it,
never a mix.  No byte of any file moves: a file is a packed record of chunk
digests, so a move re-keys records, a copy adds records that refer to the
same chunks (raising their reference counts), and a removal drops records
(lowering them).  A chunk is collected only by a later CollectChunksCommand,
and only if its count is zero when that entry applies, so a chunk shared by
a copy stays as long as either file refers to it.

"The tree at P" is the file at P, if any, and every file below the folder P;
the destination of a file ``P + rest`` is ``D + rest``.

:class:`TreeCommands` is a mixin of :class:`~storg.fsm.machine.FileStoreStateMachine`;
it uses the machine's containers and helpers directly (it has no state of its own).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from storg.fsm.errors import Conflict, InvalidCommand, NotFound
from storg.fsm.records import DIGEST_BYTES, FILE_HEAD_BYTES, MD5_TAIL_BYTES, file_chunks, file_head, file_size
from storg.fsm.sorted_paths import SortedPaths
from storg.fsm.state import Change, ChunkState, PackedFile, chunk_digests_of
from storg.paths import MAX_PATH_BYTES, ROOT, InvalidPath, normalize_path, normalize_prefix, path_bytes
from storg.wire.tree import (
    WATCH_CREATE,
    WATCH_DELETE,
    WATCH_MOVE,
    WATCH_UPDATE,
    CopyCommand,
    MoveCommand,
    RemoveTreeCommand,
)


class TreeCommands:
    """mv, cp and rm -r as state machine commands; each returns how many files it changed.

    The containers and the three helpers below belong to the machine, which
    defines them (its own definitions win over these stand-ins).
    """

    _files: dict[str, PackedFile]
    _paths: SortedPaths
    _chunks: dict[bytes, ChunkState]
    _file_bytes: int
    _changes: list[Change] | None

    def _with_session(self, client_id: int, seq: int, index: int, run: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _paths_under(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def _set_chunk(self, digest: bytes, chunk: ChunkState) -> None:
        raise NotImplementedError

    def _apply_move(self, cmd: MoveCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._move(cmd, index))

    def _apply_copy(self, cmd: CopyCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._copy(cmd, index))

    def _apply_remove_tree(self, cmd: RemoveTreeCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._remove_tree(cmd, index))

    # -- the commands ------------------------------------------------------------------

    def _move(self, cmd: MoveCommand, index: int) -> int:
        src, dst = self._src_dst(cmd.src, cmd.dst, index)
        sources = self._paths_under(src)
        if not sources:
            raise NotFound(f"{src} does not exist")
        targets = self._targets(sources, src, dst, index)
        leaving = set(sources)
        # A target that is itself one of the files moving away is vacated, not replaced.
        replaced = [t for t in targets if t in self._files and t not in leaving]
        if replaced and not cmd.force:
            raise Conflict(_exists(dst, replaced))
        self._drop_all(replaced)
        files = self._files
        records = [files.pop(path) for path in sources]
        self._paths.remove_sorted(sources)
        self._paths.add_sorted(targets)
        files.update(zip(targets, records, strict=True))
        changes = self._changes
        if changes is not None:
            for target, source, rec in zip(targets, sources, records, strict=True):
                size, _, _, sha = file_head(rec)
                changes.append(Change(WATCH_MOVE, target, source, size, sha))
        return len(sources)

    def _copy(self, cmd: CopyCommand, index: int) -> int:
        src, dst = self._src_dst(cmd.src, cmd.dst, index)
        if cmd.recursive:
            sources = self._paths_under(src)
        else:
            sources = [src] if src in self._files else []
            if not sources and self._paths_under(src):
                raise InvalidCommand(f"{src} is a folder: copy it with -r")
        if not sources:
            raise NotFound(f"{src} does not exist")
        targets = self._targets(sources, src, dst, index)
        replaced = [t for t in targets if t in self._files]
        if replaced and not cmd.force:
            raise Conflict(_exists(dst, replaced))
        changes, self._changes = self._changes, None  # a replaced file is updated, not deleted
        # Read every source before writing: with --force a target may be a source too.
        records = [self._files[path] for path in sources]
        added = _count_chunks(records)
        self._drop_all(replaced)
        for digest, count in added.items():
            chunk = self._chunks[digest]
            self._set_chunk(digest, ChunkState(chunk.size, chunk.holders, chunk.refs + count))
        # A new file: its own modified time and version (this entry), the same
        # size, SHA-256 and chunks; the packed record's middle is swapped in place.
        stamp = _TIMES.pack(cmd.modified_ns, index)
        head, tail = _TIMES_AT, _TIMES_AT + _TIMES.size
        self._files.update((path, rec[:head] + stamp + rec[tail:])
                           for path, rec in zip(targets, records, strict=True))
        self._file_bytes += sum(file_size(rec) for rec in records)
        self._paths.add_sorted(targets)
        if changes is not None:
            self._changes = changes
            was = set(replaced)
            for path, rec in zip(targets, records, strict=True):
                size, _, _, sha = file_head(rec)
                changes.append(Change(WATCH_UPDATE if path in was else WATCH_CREATE, path, "", size, sha))
        return len(sources)

    def _remove_tree(self, cmd: RemoveTreeCommand, index: int) -> int:
        try:
            prefix = normalize_prefix(cmd.prefix)
        except InvalidPath as exc:
            raise InvalidCommand(f"entry {index}: {exc}") from None
        doomed = self._paths_under(prefix)
        if not doomed:
            raise NotFound(f"{prefix} does not exist" if prefix != ROOT else "there are no files")
        self._drop_all(doomed)
        return len(doomed)

    # -- helpers -----------------------------------------------------------------------

    def _src_dst(self, src_text: str, dst_text: str, index: int) -> tuple[str, str]:
        try:
            src, dst = normalize_path(src_text), normalize_path(dst_text)
        except InvalidPath as exc:
            raise InvalidCommand(f"entry {index}: {exc}") from None
        if dst == src:
            raise InvalidCommand(f"{src} and its destination are the same")
        if dst.startswith(src + "/"):
            raise InvalidCommand(f"cannot put {src} inside itself ({dst})")
        return src, dst

    def _targets(self, sources: list[str], src: str, dst: str, index: int) -> list[str]:
        """Each source's destination; refused if one would be longer than a path may be."""
        cut = len(src)
        targets = [dst + path[cut:] for path in sources]
        if len(dst.encode()) > len(src.encode()):
            longest = max(targets, key=lambda t: len(t.encode()))
            if path_bytes(longest) > MAX_PATH_BYTES:
                raise InvalidCommand(f"{longest[:60]}... would be longer than {MAX_PATH_BYTES} bytes")
        return targets

    def _drop_all(self, paths: list[str]) -> None:
        """Remove the files at ``paths`` (sorted, all present) and their chunk references.

        One pass: the references are summed over all the files first, so a
        chunk shared by ten thousand of them is updated once, not ten
        thousand times, and the paths leave the index in one sweep.
        """
        if not paths:
            return
        pop = self._files.pop
        records = [pop(path) for path in paths]
        self._file_bytes -= sum(file_size(rec) for rec in records)
        gone = _count_chunks(records)
        self._paths.remove_sorted(paths)
        for digest, count in gone.items():
            chunk = self._chunks[digest]
            self._set_chunk(digest, ChunkState(chunk.size, chunk.holders, chunk.refs - count))
        if self._changes is not None:
            self._changes.extend(Change(WATCH_DELETE, path) for path in paths)


_TIMES = struct.Struct(">QQ")
_TIMES_AT = 8
"""modified_ns and version in a packed file record (see storg.fsm.records.pack_file)."""


def _count_chunks(records: list[PackedFile]) -> Counter[bytes]:
    """References to each chunk digest over ``records``, in first-seen order (so alike on every node)."""
    counts: Counter[bytes] = Counter()
    single = FILE_HEAD_BYTES + DIGEST_BYTES
    with_md5 = single + MD5_TAIL_BYTES
    for rec in records:
        size = len(rec)
        if size == single or (size == with_md5 and rec[-1] == 1):  # most files: one chunk
            counts[rec[FILE_HEAD_BYTES:single]] += 1
        else:
            counts.update(chunk_digests_of(file_chunks(rec)))
    return counts


def _exists(dst: str, replaced: list[str]) -> str:
    what = replaced[0] if len(replaced) == 1 else f"{replaced[0]} and {len(replaced) - 1} more files"
    return f"{dst}: {what} already exists (--force replaces it)"
