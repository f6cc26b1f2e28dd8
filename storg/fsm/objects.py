"""Object commands of the state machine (issue 18): copy with new attributes, compose, S3 keys.

Like the tree commands, each is decided completely before anything
changes and then done in one apply, so a reader sees the state before the
entry or after it.  ``compose`` is S3's CompleteMultipartUpload: the
destination is built from the parts' chunk lists in order (no byte moves),
the parts' folder is removed in the same entry, and the conditions
(``if_absent``, ``if_match_etag``) are decided here, at apply, so two
racing completions cannot both win.  A composite object's SHA-256 is the
SHA-256 of its parts' raw SHA-256 digests concatenated and
``attrs.parts`` lists the parts' sizes, which is what a reader needs to
verify it part by part.

Chunk reference counts: every file refers to its chunks once per
occurrence, so a composed file adds one reference per chunk of each part
and the removal of the parts takes theirs away; a chunk stays in the map
while any file refers to it.

S3 access keys (id -> name, role, secret, created) live here too: they
must be the same on every node, and the WAL and snapshots that carry them
are sealed at rest (issue 16).  :meth:`ObjectCommands.s3_secret` is the
gateway's lookup.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

from storg.fsm.errors import Conflict, InvalidCommand, NotFound
from storg.fsm.records import (
    DIGEST_BYTES,
    effective_etag,
    file_attrs,
    file_chunks,
    file_head,
    pack_attrs,
    pack_file,
    with_tail,
)
from storg.fsm.sorted_paths import SortedPaths
from storg.fsm.state import Change, ChunkState, PackedFile, bare_info, chunk_digests_of
from storg.paths import InvalidPath, normalize_path, normalize_prefix
from storg.wire import CodecError
from storg.wire.files import FileInfo
from storg.wire.objects import (
    ComposeCommand,
    CopyAttrsCommand,
    ObjectAttrs,
    S3Key,
    S3KeyCreateCommand,
    S3KeyRevokeCommand,
)
from storg.wire.record import replace as replace_record
from storg.wire.tree import WATCH_CREATE, WATCH_UPDATE

S3_ROLES = ("readonly", "readwrite", "admin")
"""The roles of the TLS issue; an S3 key has one of them."""

MAX_PARTS = 10000
"""S3's limit on the parts of one multipart upload."""

MAX_FILE_CHUNKS = 131072
"""The most chunks one file may have: 128 GiB at the default 1 MiB chunk size.

A file's chunk list travels whole in a GetStart or StatReply frame (about
50 bytes per chunk with its holders), is kept whole in a client session's
recorded result and in its snapshot record: all within the 8 MiB frame
limit at this count.  A single put cannot exceed it (its entry is bounded
by the proposal limit); a compose could, from small entries, so it is
refused there."""


class S3KeyState(NamedTuple):
    """One access key as the state machine keeps it (the secret included)."""

    name: str
    role: str
    secret: str
    created_ns: int


class ObjectCommands:
    """Copy with attributes, compose and S3 keys; a mixin of the machine (no state of its own
    but ``_s3_keys``, which the machine resets, freezes and restores)."""

    _files: dict[str, PackedFile]
    _paths: SortedPaths
    _chunks: dict[bytes, ChunkState]
    _file_bytes: int
    _changes: list[Change] | None
    _s3_keys: dict[str, S3KeyState]

    def _with_session(self, client_id: int, seq: int, index: int, run: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _paths_under(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def _set_chunk(self, digest: bytes, chunk: ChunkState) -> None:
        raise NotImplementedError

    def _drop_all(self, paths: list[str]) -> None:
        raise NotImplementedError

    def _info(self, path: str, rec: PackedFile) -> FileInfo:
        raise NotImplementedError

    # -- attributes ----------------------------------------------------------------------

    def _attrs_tail(self, attrs: ObjectAttrs, size: int, index: int) -> bytes:
        """The packed tail of a put's attributes; a put's own attributes name no parts."""
        if attrs.parts:
            raise InvalidCommand(f"entry {index}: only a composed file has parts")
        try:
            return pack_attrs(attrs)
        except CodecError as exc:
            raise InvalidCommand(f"entry {index}: {exc}") from None

    # -- copy with attributes ----------------------------------------------------------------

    def _apply_copy_attrs(self, cmd: CopyAttrsCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._copy_attrs(cmd, index))

    def _copy_attrs(self, cmd: CopyAttrsCommand, index: int) -> int:
        """The file ``src`` copied to ``dst`` with ``attrs`` (its parts stay the source's)."""
        src, dst = _path(cmd.src, index), _path(cmd.dst, index)
        rec = self._files.get(src)
        if rec is None:
            raise NotFound(f"{src} does not exist")
        old = self._files.get(dst)
        if old is not None and dst != src and not cmd.force:
            raise Conflict(f"{dst} already exists (--force replaces it)")
        # The content's parts are a fact of its chunks and SHA-256, not an attribute to replace.
        attrs = replace_record(cmd.attrs, parts=file_attrs(rec).parts)
        try:
            tail = pack_attrs(attrs)
        except CodecError as exc:
            raise InvalidCommand(f"entry {index}: {exc}") from None
        size, _, _, sha = file_head(rec)
        new = with_tail(pack_file(size, sha, cmd.modified_ns, index, file_chunks(rec)), tail)
        self._replace(dst, new, old)
        return 1

    def _replace(self, path: str, new: PackedFile, old: PackedFile | None) -> None:
        """Store ``new`` at ``path`` in place of ``old`` (None: a new file), counting references."""
        delta = Counter(chunk_digests_of(file_chunks(new)))
        if old is not None:
            delta.subtract(chunk_digests_of(file_chunks(old)))
        for digest, count in delta.items():
            if count:
                chunk = self._chunks[digest]
                self._set_chunk(digest, ChunkState(chunk.size, chunk.holders, chunk.refs + count))
        if old is None:
            self._paths.add(path)
        else:
            self._file_bytes -= file_head(old)[0]
        self._files[path] = new
        size, _, _, sha = file_head(new)
        self._file_bytes += size
        if self._changes is not None:
            self._changes.append(Change(WATCH_CREATE if old is None else WATCH_UPDATE, path, "", size, sha))

    # -- compose (multipart complete) --------------------------------------------------------

    def _apply_compose(self, cmd: ComposeCommand, index: int) -> FileInfo:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._compose(cmd, index))

    def _compose(self, cmd: ComposeCommand, index: int) -> FileInfo:
        dst = _path(cmd.dst, index)
        if not cmd.parts:
            raise InvalidCommand(f"entry {index}: a compose needs at least one part")
        if len(cmd.parts) > MAX_PARTS:
            raise InvalidCommand(f"entry {index}: {len(cmd.parts)} parts, more than {MAX_PARTS}")
        remove = ""
        if cmd.remove:
            try:
                remove = normalize_prefix(cmd.remove)
            except InvalidPath as exc:
                raise InvalidCommand(f"entry {index}: {exc}") from None
            if dst == remove or dst.startswith(remove + "/") or remove == "/":
                raise InvalidCommand(f"entry {index}: {dst} would be removed with {remove}")
        old = self._files.get(dst)
        if cmd.if_absent and old is not None:
            raise Conflict(f"{dst} already exists (if-none-match)")
        if cmd.if_match_etag:
            if old is None:
                raise Conflict(f"{dst} does not exist, so it cannot match ETag {cmd.if_match_etag}")
            if effective_etag(old) != cmd.if_match_etag:
                raise Conflict(f"{dst} has ETag {effective_etag(old)}, not {cmd.if_match_etag}")
        sizes: list[int] = []
        shas: list[bytes] = []
        chunks: list[bytes] = []
        for text in cmd.parts:
            part = _path(text, index)
            rec = self._files.get(part)
            if rec is None:
                raise NotFound(f"part {part} does not exist")
            if file_attrs(rec).parts:
                raise InvalidCommand(f"entry {index}: part {part} is itself composed")
            size, _, _, sha = file_head(rec)
            sizes.append(size)
            shas.append(sha)
            chunks.append(file_chunks(rec))
        total = sum(len(c) for c in chunks) // DIGEST_BYTES
        if total > MAX_FILE_CHUNKS:
            raise InvalidCommand(f"entry {index}: the composed file would have {total} chunks, more than "
                                 f"{MAX_FILE_CHUNKS}")
        attrs = replace_record(cmd.attrs, parts=tuple(sizes))
        try:
            tail = pack_attrs(attrs)
        except CodecError as exc:
            raise InvalidCommand(f"entry {index}: {exc}") from None
        composite = hashlib.sha256(b"".join(shas)).digest()
        new = pack_file(sum(sizes), composite, cmd.modified_ns, index, b"".join(chunks), tail)
        # References first up, then down: no count passes through zero on the way.
        self._replace(dst, new, old)
        if remove:
            self._drop_all(self._paths_under(remove))
        return self._info(dst, new)

    # -- S3 access keys ----------------------------------------------------------------------

    def _apply_s3_key_create(self, cmd: S3KeyCreateCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._s3_key_create(cmd, index))

    def _s3_key_create(self, cmd: S3KeyCreateCommand, index: int) -> int:
        if cmd.role not in S3_ROLES:
            raise InvalidCommand(f"role {cmd.role!r} is not one of {', '.join(S3_ROLES)}")
        if not cmd.key_id or not cmd.key_id.isalnum() or not cmd.secret:
            raise InvalidCommand(f"entry {index}: an S3 key needs an alphanumeric id and a secret")
        if cmd.key_id in self._s3_keys:
            raise Conflict(f"S3 key {cmd.key_id} already exists")
        self._s3_keys[cmd.key_id] = S3KeyState(cmd.name, cmd.role, cmd.secret, cmd.created_ns)
        return index

    def _apply_s3_key_revoke(self, cmd: S3KeyRevokeCommand, index: int) -> int:
        return self._with_session(cmd.client_id, cmd.seq, index, lambda: self._s3_key_revoke(cmd, index))

    def _s3_key_revoke(self, cmd: S3KeyRevokeCommand, index: int) -> int:
        if self._s3_keys.pop(cmd.key_id, None) is None:
            raise NotFound(f"no S3 key {cmd.key_id}")
        return index

    def s3_secret(self, key_id: str) -> tuple[str, str] | None:
        """(secret, role) of an applied, unrevoked access key, or None: the gateway's lookup."""
        key = self._s3_keys.get(key_id)
        return None if key is None else (key.secret, key.role)

    def s3_keys(self) -> list[S3Key]:
        """Every key, by id, without secrets."""
        return [S3Key(key_id, k.name, k.role, k.created_ns) for key_id, k in sorted(self._s3_keys.items())]

    def page(self, prefix: str, start_after: str, limit: int) -> tuple[list[FileInfo], bool]:
        """At most ``limit`` files whose path starts with the string ``prefix``, after ``start_after``,
        in path order (chunks left empty), and whether more follow."""
        start = max(prefix, start_after)
        found: list[FileInfo] = []
        files = self._files
        for path in self._paths.from_key(start):
            if not path.startswith(prefix):
                return found, False
            if path == start_after:
                continue
            if len(found) == limit:
                return found, True
            found.append(bare_info(path, files[path]))
        return found, False


def _path(text: str, index: int) -> str:
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise InvalidCommand(f"entry {index}: {exc}") from None
