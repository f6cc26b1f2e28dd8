"""Snapshot data on disk: the frame format, reading a snapshot back, and the one-writer lock.

Snapshot data is the state machine's frames, each prefixed by its length
as a big-endian u32.  Only one snapshot is written at a time
(:class:`SnapshotWriteLock`): an automatic snapshot never replaces, nor
races, one received from the leader.  :func:`load_snapshot` reads the
current snapshot back at start-up; :class:`~storg.server.snapshots.node.NodeSnapshots`
does it in a thread when the core adopts one sent by the leader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator

from twisted.logger import Logger

from storg.fsm.errors import SnapshotFormatError
from storg.fsm.snapshot import LoadedSnapshot, read_snapshot
from storg.raft.types import SnapshotMeta
from storg.storage.errors import StorageError
from storg.storage.logstore import DiskLogStore
from storg.storage.snapshot import SnapshotReader, SnapshotWriter
from storg.wire import MAX_FRAME_BYTES

log = Logger(namespace="storg.snapshots")

PART_BYTES = 256 * 1024
"""Data per SnapshotPart frame: small next to the frame limit, large enough to stream fast."""

MAX_PART_BYTES = 1 << 20
"""The largest part a follower accepts."""

MAX_SNAPSHOT_BYTES = 1 << 40
"""The largest snapshot a follower accepts; a bigger size is a broken or hostile sender."""

_WRITE_BATCH = 1 << 20
READ_CHUNK = 1 << 20
"""Bytes a snapshot file is read in (to decode, to hash, to send)."""
_LENGTH = struct.Struct(">I")



class SnapshotUnavailable(Exception):
    """There is no snapshot to send, or the follower cannot be reached."""


class Cancelled(Exception):
    """The node is stopping: an automatic snapshot being written is abandoned."""


def write_frames(writer: SnapshotWriter, frames: Iterable[bytes],
                 cancelled: Callable[[], bool] = lambda: False) -> int:
    """Write ``frames`` u32-length-prefixed, in about 1 MiB writes; returns the bytes written."""
    batch: list[bytes] = []
    pending = 0
    total = 0
    pack = _LENGTH.pack
    for frame in frames:
        batch.append(pack(len(frame)))
        batch.append(frame)
        pending += 4 + len(frame)
        if pending >= _WRITE_BATCH:
            if cancelled():
                raise Cancelled()
            writer.write(b"".join(batch))
            total += pending
            batch.clear()
            pending = 0
    if batch:
        writer.write(b"".join(batch))
        total += pending
    return total


def read_frames(reader: SnapshotReader) -> Iterator[bytes]:
    """The frames of a snapshot's data; the reader checks the SHA-256 when it reaches the end."""
    buf = bytearray()
    pos = 0
    while True:
        data = reader.read(READ_CHUNK)
        if not data:
            break
        if pos:
            del buf[:pos]
            pos = 0
        buf += data
        while len(buf) - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > MAX_FRAME_BYTES:
                raise SnapshotFormatError(f"snapshot frame of {length} bytes is over the limit")
            end = pos + _LENGTH.size + length
            if end > len(buf):
                break
            yield bytes(buf[pos + _LENGTH.size:end])
            pos = end
    if pos != len(buf):
        raise SnapshotFormatError("snapshot data ends inside a frame")


def read_snapshot_file(log_store: DiskLogStore, expected: SnapshotMeta | None) -> LoadedSnapshot | None:
    """Blocking: decode the current snapshot (None for none, or for index 0's membership only)."""
    reader = log_store.open_snapshot()
    if reader is None:
        if expected is not None:
            raise StorageError(f"the snapshot at index {expected.index} is not in the snapshot store")
        return None
    with reader:
        meta = reader.meta
        if expected is not None and (meta.index, meta.term) != (expected.index, expected.term):
            raise StorageError(f"expected the snapshot at index {expected.index} term {expected.term}, "
                               f"the store holds index {meta.index} term {meta.term}")
        if meta.index == 0:
            return None
        return read_snapshot(read_frames(reader))


def load_snapshot(log_store: DiskLogStore) -> LoadedSnapshot | None:
    """Blocking: the current snapshot decoded and checked, ready for ``fsm.install``.

    For start-up, before the reactor runs.  Raises CorruptionError,
    SnapshotFormatError or CodecError on damaged data.
    """
    return read_snapshot_file(log_store, None)


class SnapshotWriteLock:
    """At most one snapshot being written or committed by this node (reactor thread only)."""

    def __init__(self) -> None:
        self.holder = ""

    def acquire(self, who: str) -> bool:
        if self.holder:
            return False
        self.holder = who
        return True

    def release(self, who: str) -> None:
        if self.holder == who:
            self.holder = ""
