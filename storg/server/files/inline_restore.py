"""At start-up: small files the log still holds but the chunk store lost, written again.

A small file's bytes ride in its log entry and are written to the chunk
store when the entry applies, without an fsync of their own; before the
log is compacted past the entry they are made durable
(``FileService.sync_inline_chunks``), and a failed write blocks the
compaction.  A snapshot, though, may cover the entry already: a restarted
node installs the snapshot and replays only the entries after it, so a
write that failed (or never reached the disk) after the snapshot's freeze
would be lost here for good, and on every holder if all of them failed
alike.  Since the compaction did not happen, the entry is still in the
log: this pass reads the entries at or below the snapshot that the log
kept, and writes, durably, each small file this node is a recorded holder
of but does not have.  It runs once, before the reactor, in the order the
node already blocks in to read its snapshot; the entries it reads are at
most a segment's worth after a good compaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from storg.raft.types import Entry, EntryType
from storg.storage.chunks import ChunkStore
from storg.wire import CODEC
from storg.wire.batch import PutInlineBatchCommand
from storg.wire.chunks import PutInlineCommand
from storg.wire.objects import PutObjectCommand
from storg.wire.tree import ConditionalPutCommand


def restore_inline_chunks(entries: Iterable[Entry], fsm: Any, store: ChunkStore, node_id: str) -> int:
    """Write the small files of ``entries`` that ``node_id`` holds in ``fsm`` but ``store`` lacks."""
    restored = 0
    for entry in entries:
        if entry.type != EntryType.NORMAL or not entry.data:
            continue
        for cmd in _inline_puts(entry.data):
            if not cmd.data or node_id not in cmd.holders:
                continue
            digest = hashlib.sha256(cmd.data).hexdigest()
            chunk = fsm.chunk(digest)
            if chunk is None or node_id not in chunk.holders or store.has(digest):
                continue
            store.put(cmd.data, digest, verified=True)
            restored += 1
    return restored


def _inline_puts(data: bytes) -> list[PutInlineCommand]:
    """The inline puts an entry holds: one, wrapped in conditions or attributes, or a batch's many."""
    try:
        cmd = CODEC.decode(data)
    except Exception:  # noqa: BLE001 -- not a command of ours (a no-op, a config): skip it
        return []
    if isinstance(cmd, PutInlineBatchCommand):  # put -r's many small files in one entry
        return [put for body in cmd.commands for put in _inline_puts(body)]
    if isinstance(cmd, (ConditionalPutCommand, PutObjectCommand)):  # a put with conditions or attributes
        try:
            cmd = CODEC.decode(cmd.command)
        except Exception:  # noqa: BLE001 -- the state machine refused it too
            return []
    return [cmd] if isinstance(cmd, PutInlineCommand) else []
