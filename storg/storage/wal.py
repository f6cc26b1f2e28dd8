"""The write-ahead log: Raft entries in checksummed, append-only segment files.

Layout.  A directory of segment files, each named by the index of its first
entry (``0000000000000001.wal``).  A segment is a run of records::

    length u32 | crc u32 | payload (length bytes, = encode_entry(entry))

all big-endian; ``crc`` is zlib's CRC-32 of the four length bytes followed
by the payload, so an all-zero header (a page the disk never wrote) is never
a valid record.

Invariants the code relies on:

* Segment names are contiguous: each segment starts at the index after the
  last entry of the one before, and a segment holds consecutive indexes.
  The name is therefore also the snapshot marker: after a snapshot at S the
  log can be one empty segment named S+1, which says "the next entry is S+1"
  with no entry before it.
* Only the last segment is ever written.  Earlier segments are complete and
  were fsynced, so a bad record there is corruption, never a torn write.
* A batch is never split across segments: one ``write`` (``writev`` for
  big batches) and one ``fsync`` per :meth:`WriteAheadLog.append` (group
  commit).  A batch bigger than a segment gets a segment of its own.
* Files are deleted one at a time with a directory fsync after each, in an
  order that leaves a contiguous log at every step (oldest first when
  compacting, newest first when truncating or resetting), so a crash mid-way never
  leaves a gap that recovery would have to guess about.

Recovery (:meth:`WriteAheadLog.open`) reads the segments in order.  In the
last segment a record that runs past the end of the file, or whose bad
bytes are followed only by zeros to the end of the file (the file grew but
its pages never reached the disk), is a torn write: it and everything after
it are cut off and the cut is fsynced.  Any other bad checksum, anywhere,
raises :class:`CorruptionError` naming the file and offset; nothing is
skipped.  A seemingly torn record followed by a valid record of the next
entry (a flipped bit in a length field, or a batch that reached the disk
with a hole in it) is also reported as corruption: refusing to start is
safe, guessing is not.  (A damaged length field in the very last record
of the log cannot be told from a torn write; that record is cut.)

Memory: the log keeps, per entry, its file offset and term (16 bytes);
payloads are read back from disk on demand.  The node's Raft core holds its
own copy of the entries it needs, so the WAL mostly appends, truncates,
compacts and replays (:meth:`WriteAheadLog.read_all`) at start-up.

Threads: every method does blocking I/O and may run in a thread pool, but
calls on one log must be serialized by the caller (the node runs them one
at a time); the object has no lock of its own.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from storg.raft.types import Entry
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.fsutil import (
    disk_errors,
    ensure_dir,
    fsync_dir,
    storage_error,
    write_all,
)
from storg.wire.records import CodecError, decode_entry, encode_entry

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

_HEAD = struct.Struct(">II")
_LEN = struct.Struct(">I")
_INDEX = struct.Struct(">Q")
HEADER_BYTES = _HEAD.size
_SEGMENT_NAME = re.compile(r"^(\d{16})\.wal$")


def segment_name(first_index: int) -> str:
    """The file name of the segment whose first entry is ``first_index``."""
    return f"{first_index:016d}.wal"


def encode_record(payload: bytes) -> bytes:
    """Frame one payload: length, CRC-32 of length+payload, payload."""
    n = _LEN.pack(len(payload))
    return n + _LEN.pack(zlib.crc32(payload, zlib.crc32(n))) + payload


def frame_entry(entry: Entry) -> bytes:
    """The record for one entry: the reference definition of the format."""
    return encode_record(encode_entry(entry))


_RECORD_HEAD = struct.Struct(">IQQBI")  # record length, then encode_entry's head
_ENTRY_HEAD_BYTES = _RECORD_HEAD.size - _LEN.size
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16
WRITEV_MIN_BYTES = 256 * 1024
"""Batches this big go out with writev: joining them would copy every payload."""


def _encode_batch(entries: Sequence[Entry]) -> tuple[list[bytes], int, list[int]]:
    """Frame a batch as alternating record heads and payload data.

    Returns the parts, their total size and each record's offset.  The
    parts concatenate to :func:`frame_entry` of each entry (a test holds
    the two together); they are built without copying payloads because the
    append path is CPU-bound for small entries on a fast disk.
    """
    parts: list[bytes] = []
    put = parts.append
    offsets = []
    off = 0
    pack, pack_crc, crc32 = _RECORD_HEAD.pack, _LEN.pack, zlib.crc32
    for e in entries:
        data = e.data
        n = len(data)
        head = pack(n + _ENTRY_HEAD_BYTES, e.term, e.index, e.type, n)
        put(head[:4] + pack_crc(crc32(data, crc32(head))) + head[4:])
        put(data)
        offsets.append(off)
        off += HEADER_BYTES + _ENTRY_HEAD_BYTES + n
    return parts, off, offsets


def _write_parts(fd: int, parts: list[bytes], nbytes: int) -> None:
    """Write the parts with one system call (short writes aside)."""
    if nbytes >= WRITEV_MIN_BYTES and len(parts) <= _IOV_MAX:
        done = os.writev(fd, parts)
        if done < nbytes:  # a short write: finish the rest plainly
            write_all(fd, memoryview(b"".join(parts))[done:])
    else:
        write_all(fd, b"".join(parts))


@dataclass(eq=False)
class _Segment:
    """One segment file and the in-memory index of its records."""

    first: int
    path: Path
    size: int = 0
    offsets: array = field(default_factory=lambda: array("Q"))
    terms: array = field(default_factory=lambda: array("Q"))

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def record_end(self, i: int) -> int:
        """File offset just past the record at position ``i``."""
        return self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size


class _Torn(Exception):
    """Internal: the last segment ends in a torn write at ``offset``."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _parse(path: Path, data: bytes, base: int, first_index: int, is_tail: bool):
    """Check and decode the records in ``data`` (which starts at file offset ``base``).

    Yields ``(offset, entry)``.  Raises :class:`_Torn` for a torn write when
    ``is_tail`` allows one, otherwise :class:`CorruptionError`.
    """
    view = memoryview(data)
    pos, end, index = 0, len(data), first_index
    while pos < end:
        if end - pos < HEADER_BYTES:
            problem, rec_end = f"record header cut short ({end - pos} of {HEADER_BYTES} bytes)", None
        else:
            length, crc = _HEAD.unpack_from(data, pos)
            rec_end = pos + HEADER_BYTES + length
            if rec_end > end:
                problem, rec_end = f"record of {length} bytes runs past the end of the file", None
            elif zlib.crc32(view[pos + HEADER_BYTES:rec_end], zlib.crc32(view[pos:pos + 4])) != crc:
                problem = "checksum mismatch"
            else:
                problem = None
        if problem is not None:
            # A torn write: the record never fit, or the disk persisted the
            # file's new length but not its last pages (zeros to the end).
            if is_tail and (rec_end is None or len(data.rstrip(b"\0")) < rec_end):
                later = _next_valid_record(data, pos, index + 1)
                if later is None:
                    raise _Torn(base + pos)
                problem += f", yet a valid record for index {index + 1} follows at offset {base + later}"
            raise CorruptionError(path, base + pos, problem)
        try:
            entry = decode_entry(view[pos + HEADER_BYTES:rec_end])
        except CodecError as e:
            raise CorruptionError(path, base + pos, f"undecodable entry: {e}") from None
        if entry.index != index:
            raise CorruptionError(path, base + pos, f"entry index {entry.index} where {index} was expected")
        yield base + pos, entry
        index += 1
        pos = rec_end


def _next_valid_record(data: bytes, after: int, index: int) -> int | None:
    """Offset of a valid record for entry ``index`` past ``after``, if any.

    A torn write leaves nothing valid behind it, but a flipped bit in a
    length field also makes a record seem to run past the end of the file.
    Finding the next entry intact behind it tells the two apart, so acked
    entries are reported as corrupt instead of being cut off as torn.
    The search looks only where that entry's index bytes occur.
    """
    needle = _INDEX.pack(index)
    # Record layout: length u32, crc u32, then the entry: term u64, index u64.
    skip = HEADER_BYTES + 8
    p = data.find(needle, after + 1 + skip)
    while p != -1:
        q = p - skip
        if q + HEADER_BYTES <= len(data):
            length, crc = _HEAD.unpack_from(data, q)
            end = q + HEADER_BYTES + length
            if end <= len(data) and zlib.crc32(data[q + HEADER_BYTES:end], zlib.crc32(data[q:q + 4])) == crc:
                return q
        p = data.find(needle, p + 1)
    return None


class WriteAheadLog:
    """Raft's log on disk.  Create with :meth:`open`; see the module docstring."""

    def __init__(self, directory: Path, segment_bytes: int, segments: list[_Segment]) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._segments = segments
        self._firsts = [s.first for s in segments]
        self._fd: int | None = None
        self._failed: str | None = None
        self._open_tail()

    # -- opening and recovery ------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> WriteAheadLog:
        """Open (creating if needed) the log in ``directory`` and recover it.

        Cuts a torn tail off the last segment (and fsyncs the cut); raises
        :class:`CorruptionError` for any other damage or a missing segment.
        """
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        d = ensure_dir(directory)
        with disk_errors(f"cannot list the log directory {d}"):
            found = sorted(
                (int(m.group(1)), d / p) for p in os.listdir(d) if (m := _SEGMENT_NAME.match(p))
            )
        segments: list[_Segment] = []
        for i, (first, path) in enumerate(found):
            if segments and first != segments[-1].last + 1:
                raise CorruptionError(
                    path, None, f"segment starts at index {first} but the previous one ends at "
                    f"{segments[-1].last} (a segment is missing or misnamed)")
            segments.append(cls._recover_segment(first, path, is_tail=i == len(found) - 1))
        if not segments:
            path = d / segment_name(1)
            with disk_errors(f"cannot create {path}"):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                fsync_dir(d)
            segments.append(_Segment(1, path))
        return cls(d, segment_bytes, segments)

    @staticmethod
    def _recover_segment(first: int, path: Path, is_tail: bool) -> _Segment:
        """Index one segment; cut and fsync a torn tail if it is the last one.

        Reads the whole file at once: a segment is bounded by segment_bytes
        (or by one batch, if a batch was bigger).
        """
        with disk_errors(f"cannot read {path}"):
            data = path.read_bytes()
        seg = _Segment(first, path)
        try:
            for offset, entry in _parse(path, data, 0, first, is_tail):
                seg.offsets.append(offset)
                seg.terms.append(entry.term)
            seg.size = len(data)
        except _Torn as torn:
            seg.size = torn.offset
            with disk_errors(f"cannot cut the torn tail of {path}"):
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, torn.offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return seg

    def _open_tail(self) -> None:
        """(Re)open the last segment for appending."""
        self._close_fd()
        with disk_errors(f"cannot open {self._segments[-1].path}"):
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self) -> None:
        """Release the file descriptor; the log is unusable afterwards."""
        self._close_fd()
        self._failed = self._failed or "the log is closed"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries --------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def first_index(self) -> int:
        """Index of the first entry held; ``last_index + 1`` when the log is empty."""
        return self._segments[0].first

    @property
    def last_index(self) -> int:
        """Index of the last entry held; ``first_index - 1`` when the log is empty."""
        return self._segments[-1].last

    def _locate(self, index: int) -> tuple[_Segment, int]:
        if not self.first_index <= index <= self.last_index:
            raise IndexError(f"index {index} is outside the log [{self.first_index}, {self.last_index}]")
        seg = self._segments[bisect.bisect_right(self._firsts, index) - 1]
        return seg, index - seg.first

    def term_at(self, index: int) -> int:
        """Term of the entry at ``index``; IndexError outside the log."""
        seg, i = self._locate(index)
        return seg.terms[i]

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``, read back from disk and re-checked.

        Raises IndexError unless ``first_index <= lo <= hi <= last_index + 1``.
        """
        self._check_usable()
        if not self.first_index <= lo <= hi <= self.last_index + 1:
            raise IndexError(f"range [{lo}, {hi}) is outside the log [{self.first_index}, {self.last_index}]")
        out: list[Entry] = []
        index = lo
        while index < hi:
            seg, i = self._locate(index)
            j = min(hi - 1, seg.last) - seg.first
            start, stop = seg.offsets[i], seg.record_end(j)
            with disk_errors(f"cannot read {seg.path}"):
                fd = os.open(seg.path, os.O_RDONLY)
                try:
                    data = os.pread(fd, stop - start, start)
                finally:
                    os.close(fd)
            if len(data) != stop - start:
                raise CorruptionError(seg.path, start + len(data), "file is shorter than its index says")
            out.extend(e for _, e in _parse(seg.path, data, start, index, is_tail=False))
            index = seg.first + j + 1
        return out

    def read_all(self) -> list[Entry]:
        """Every entry held, for replay at start-up."""
        return self.entries(self.first_index, self.last_index + 1)

    # -- mutations --------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"write-ahead log in {self._dir} is unusable: {self._failed}; reopen it")

    def append(self, entries: Sequence[Entry]) -> None:
        """Durably append a batch: one write, one fsync (group commit).

        If ``entries[0].index <= last_index`` the conflicting suffix is cut
        first (Raft's log matching), which costs its own fsync.  The batch
        must be consecutive and start within ``[first_index, last_index+1]``.

        On a write error (a full disk) the partial write is cut back and the
        log stays usable without the batch; an fsync error makes the log
        unusable until reopened, since the kernel may have dropped the pages.
        """
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise ValueError(f"batch is not consecutive: index {e.index} at position {k} after {first}")
        if not self.first_index <= first <= self.last_index + 1:
            raise ValueError(f"batch starting at {first} does not fit a log holding "
                             f"[{self.first_index}, {self.last_index}]")
        if first <= self.last_index:
            self.truncate(first)

        parts, nbytes, rel = _encode_batch(entries)
        seg = self._segments[-1]
        if seg.size > 0 and seg.size + nbytes > self._segment_bytes:
            seg = self._roll(first)
        base = seg.size
        try:
            _write_parts(self._fd, parts, nbytes)
        except OSError as e:
            self._undo_write(seg, base)
            raise storage_error(f"cannot append to {seg.path}", e) from e
        try:
            os.fsync(self._fd)
        except OSError as e:
            err = storage_error(f"cannot fsync {seg.path}", e)
            self._failed = str(err)
            raise err from e
        seg.offsets.extend([base + r for r in rel])
        seg.terms.extend(e.term for e in entries)
        seg.size = base + nbytes

    def _undo_write(self, seg: _Segment, size: int) -> None:
        """Cut a failed write back so no half record stays in front of the next batch."""
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            self._failed = f"cannot undo a failed write to {seg.path}: {e.strerror}"

    def _roll(self, first: int) -> _Segment:
        """Start a new segment for the batch beginning at ``first``."""
        path = self._dir / segment_name(first)
        with disk_errors(f"cannot create segment {path}"):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            fsync_dir(self._dir)
        seg = _Segment(first, path)
        self._segments.append(seg)
        self._firsts.append(first)
        self._open_tail()
        return seg

    def _unlink(self, seg: _Segment) -> None:
        with disk_errors(f"cannot delete segment {seg.path}"):
            os.unlink(seg.path)
            fsync_dir(self._dir)

    def truncate(self, from_index: int) -> None:
        """Remove every entry with index >= ``from_index`` (durably).

        Whole segments above the cut are deleted newest first; the segment
        holding the cut is shortened and fsynced.  The deletions are made
        durable before the shortening, so a crash never leaves a gap.
        """
        self._check_usable()
        if from_index > self.last_index:
            return
        if from_index < self.first_index:
            raise ValueError(f"cannot truncate at {from_index}: the log starts at {self.first_index}")
        try:
            while self._segments[-1].first > from_index:
                self._close_fd()
                self._unlink(self._segments.pop())
                self._firsts.pop()
            seg, i = self._locate(from_index)
            cut = seg.offsets[i]
            self._open_tail()
            with disk_errors(f"cannot truncate {seg.path}"):
                os.ftruncate(self._fd, cut)
                os.fsync(self._fd)
        except StorageError as e:
            self._failed = str(e)
            raise
        del seg.offsets[i:]
        del seg.terms[i:]
        seg.size = cut

    def compact(self, upto_index: int) -> None:
        """Drop whole segments whose entries are all <= ``upto_index``.

        Called once a snapshot covers ``upto_index``.  The last segment is
        always kept, so ``first_index`` may stay at or below ``upto_index``;
        the caller ignores entries its snapshot already covers.
        """
        self._check_usable()
        try:
            while len(self._segments) > 1 and self._segments[0].last <= upto_index:
                self._unlink(self._segments[0])
                self._segments.pop(0)
                self._firsts.pop(0)
        except StorageError as e:
            self._failed = str(e)
            raise

    def reset(self, next_index: int) -> None:
        """Discard every entry; the log becomes empty and expects ``next_index``.

        For a follower that installed a snapshot at ``next_index - 1`` its
        log does not match.  Segments are deleted newest first, then an
        empty marker segment named ``next_index`` is created.  After a crash
        mid-way the log is an older prefix (or empty from index 1); the
        caller sees ``last_index`` below its snapshot (or a wrong term at
        the snapshot's index) and calls reset again.
        """
        self._check_usable()
        if next_index < 1:
            raise ValueError("next_index must be >= 1")
        try:
            self._close_fd()
            while self._segments:
                self._unlink(self._segments[-1])
                self._segments.pop()
                self._firsts.pop()
            path = self._dir / segment_name(next_index)
            with disk_errors(f"cannot create segment {path}"):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                fsync_dir(self._dir)
            self._segments.append(_Segment(next_index, path))
            self._firsts.append(next_index)
            self._open_tail()
        except StorageError as e:
            self._failed = str(e)
            raise
