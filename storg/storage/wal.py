"""The write-ahead log: Raft entries in checksummed, append-only segment files.

Layout (format 2).  A directory of segment files, each named by the index of
its first entry (``0000000000000001.wal``).  A segment is a run of records,
one per :meth:`WriteAheadLog.append` batch (group commit: one record, one
write, one fsync), and the last segment may end in zero fill (below)::

    magic "WAL\\x02" | length u32 | first u64 | count u32
    | term u64 * count | type u8 * count | size u32 * count
    | data (the entries' payloads, back to back) | crc u32

all big-endian.  The record holds entries ``first .. first + count - 1``;
``length`` is the size of the whole record, magic to crc inclusive; ``crc``
is the CRC-32C (Castagnoli, as in etcd's WAL) of every byte before it, so an
all-zero page (one the disk never wrote) is never a valid record.  Why this
shape:

* Columnar, one record per batch: on a disk whose fsync takes 0.1 ms the
  append path is CPU-bound, and framing each entry as its own record (a
  struct and two CRC calls per entry) cost twice the write+fsync of a batch
  of small entries.  Columns are a few array operations and one CRC pass.
* The CRC comes last: it covers every byte before it, and a record whose
  write was cut short runs past the end of the file, the clearest sign of
  a torn write.  (Hiding the CRC of big batches behind the I/O was tried:
  starting the payload's writeback with ``sync_file_range`` first gained
  nothing here, since the fsync's cost is the flush, not the transfer; a
  CRC thread beside ``writev`` lost to GIL hand-offs under load.)
* CRC-32C through ``google_crc32c``, which uses the CPU's CRC instruction:
  about 5 GB/s here against 1.2-2 GB/s for zlib's CRC-32, whose cost alone
  kept batches of 64 KiB entries under 0.8 of the raw write+fsync rate.
* The magic marks the format (format 1, one record per entry, had none: its
  segments are reported as corrupt at offset 0, never cut) and lets recovery
  find a valid record behind a damaged one (see below).

A record replaces the log from its ``first`` index on.  Normally ``first``
is the index after the last entry so far; a batch that overwrites a
conflicting suffix in the last segment simply starts lower, and truncating
in the middle of a batch record appends a record with ``count`` 0 and
``first`` at the cut (a *truncation marker*).  So the entries before the
cut, which were acknowledged, are never rewritten, and a crash can only
leave the log before or after the change.  Truncating at the first entry
of a record that replaced nothing cuts the file there instead (every
record after it concerns only later entries), and truncating at the
segment's first entry empties it.

Zero fill.  The last segment keeps zeros, already on disk, ahead of its
logical end, and records are written over them (``pwrite`` at the logical
end; the file is not opened ``O_APPEND``).  Why: on ext4 an fsync after a
write that grows the file must commit a journal transaction (new size, new
blocks), while an fsync after overwriting blocks that were already written
only flushes the data.  Measured here (ext4 on a virtio disk, medians of
pwrite+fsync, growing file -> pre-zeroed file): 300 B 78 -> 60 us, 4 KiB
82 -> 52 us, 68 KiB 192 -> 100 us, 1 MiB 1163 -> 781 us.
``posix_fallocate`` alone gains nothing (ext4's unwritten extents still need
a journal commit on first write); PostgreSQL and RocksDB recycle old WAL
files and etcd preallocates its segments for the same reason.  How:

* A record that does not fit the fill is written together with the next
  ``fill_bytes`` of zeros (default 1 MiB, never past ``segment_bytes``),
  in the same ``pwritev`` and under the same fsync: an append is still one
  write and one fsync, and the journal commit happens once per stretch of
  fill instead of once per batch.  (Writing the zeros first, with an fsync
  of their own, measured no better and is one more fsync.)
* Zeros are not free: the disk writes every byte twice (1 MiB of zeros
  and its fsync took 1.1 ms, ~1.1 us per KiB, against a saving of 20-90 us
  per fsync), so records above ``FILL_MAX_RECORD_BYTES`` (64 KiB) are
  written without fill.  Per append, fill included (growing -> with
  fill): 300 B 74 -> 58 us, 4 KiB 110 -> 60 us, 16 KiB 133 -> 89 us,
  32 KiB 135 -> 112 us, 48 KiB 140 -> 130 us, 64 KiB 149 -> 156 us,
  96 KiB 207 -> 240 us, 1 MiB 1077 -> 1647 us.  (A background writer of
  fill could make big records gain too; not done: the log has no thread.)
* Rolling to a new segment first cuts the old tail's fill (ftruncate to its
  logical size, then fsync), before the new file exists: only the last
  segment ever holds fill.  Truncating by cutting the file drops the fill
  too; the next append writes more.  Recovery cuts a torn tail likewise.
* A full disk while writing fill: the partial write is cut back and the
  record is written again alone, so the log keeps working until the record
  itself does not fit (then :class:`DiskFullError`, as before).
* The format is unchanged: logs written before the fill open as they are,
  and get fill at their next append; ``fill_bytes=0`` writes exact files.

Invariants the code relies on:

* Segment names are contiguous: each segment starts at the index after the
  last entry of the one before, and its first record starts at its name.
  The name is therefore also the snapshot marker: after a snapshot at S the
  log can be one empty segment named S+1, which says "the next entry is S+1"
  with no entry before it.
* Only the last segment is ever written, and only it may hold zero fill.
  Earlier segments are complete, exact and were fsynced, so a bad record
  (or a zero) there is corruption, never a torn write or fill.
* A batch is never split across segments.  A batch bigger than a segment
  gets a segment of its own.
* Files are deleted one at a time with a directory fsync after each, in an
  order that leaves a contiguous log at every step (oldest first when
  compacting, newest first when truncating or resetting), so a crash mid-way
  never leaves a gap that recovery would have to guess about.

Recovery (:meth:`WriteAheadLog.open`) reads the segments in order.  In the
last segment, zeros from the end of a record (or from offset 0) to the end
of the file are zero fill: the end of the log, kept as it is.  A record
there that runs past the end of the file, or whose bad bytes are followed
only by zeros to the end of the file (the file grew but its pages never
reached the disk), or that has a sector still all zeros (it overwrote the
fill, and power failed before all its sectors were on the disk: an
overwrite in place has no order) is a torn write: it and everything after
it are cut off and the cut is fsynced.  Since a batch is acknowledged only
after its fsync, dropping a whole torn batch loses nothing acknowledged.
Any other bad record, anywhere, raises :class:`CorruptionError` naming the
file and offset; nothing is skipped.  A seemingly torn record followed by a
valid record that could come next (a flipped bit in a length field, or a
write that reached the disk with a hole in it) is also reported as
corruption: refusing to start is safe, guessing is not.  (Damage to the
very last record of the log that looks like a torn write cannot be told
from one, and that record is cut: a damaged length field, or a record
that is bad and also holds a whole sector of zeros, e.g. a payload of
zeros.  Etcd reads its preallocated segments by the same sector rule.)

Sealed records (encryption at rest).  Opened with a
:class:`~storg.storage.keys.Keyring`, the log seals the data section of
every record that holds entries: ``data`` becomes ``key id | salt | tag |
AES-GCM(payloads)`` (:data:`~storg.storage.keys.SEAL_OVERHEAD` more bytes),
authenticated with the record's header and columns as associated data, so
neither a payload nor the index, term or type of an entry can be altered
without the key.  The framing, the columns (indexes, terms, types and
sizes: what an attacker may learn) and the CRC stay as they are, so torn
writes, zero fill and recovery work unchanged: the CRC covers the sealed
bytes and is checked first, and a record whose CRC holds but whose tag
fails is corruption, never a torn write.  Truncation markers hold no data
and are not sealed.  Whether a log is sealed is the data_dir's decision
(its identity file), never guessed from the records.

Memory: the log keeps the term of each entry (8 bytes) and the index,
offset and size of each live record (25 bytes); payloads are read back
from disk, whole records at a time so their CRC is re-checked.  The node's
Raft core holds its own copy of the entries it needs, so the WAL mostly
appends, truncates, compacts and replays (:meth:`WriteAheadLog.read_all`)
at start-up.

Threads: every method does blocking I/O and may run in a thread pool, but
calls on one log must be serialized by the caller (the node runs them one
at a time); the object has no lock of its own.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Self

from google_crc32c import extend as crc32c_extend
from google_crc32c import value as crc32c

from storg import tracing
from storg.raft.types import Entry, EntryType
from storg.storage.errors import CorruptionError, StorageError
from storg.storage.fsutil import (
    disk_errors,
    ensure_dir,
    fsync_dir,
    storage_error,
)
from storg.storage.keys import SEAL_OVERHEAD, Keyring

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

MAGIC = b"WAL\x02"
"""Starts every record; the last byte is the format version."""

_FRAME = struct.Struct(">4sI")  # magic, length
_HEAD = struct.Struct(">4sIQI")  # magic, length, first, count
_FIRST_COUNT = struct.Struct(">QI")
_CRC = struct.Struct(">I")
_ONE = struct.Struct(">4sIQIQBI")  # the header and columns of a one-entry record
HEADER_BYTES = _HEAD.size
TRAILER_BYTES = _CRC.size
PER_ENTRY_BYTES = 8 + 1 + 4
"""Column bytes per entry besides its data: term, type, size."""
MIN_RECORD_BYTES = HEADER_BYTES + TRAILER_BYTES
MAX_RECORD_BYTES = 2**32 - 1
_SEGMENT_NAME = re.compile(r"^(\d{16})\.wal$")
_SWAP = sys.byteorder == "little"  # the columns are big-endian on disk
_VALID_TYPES = bytes(int(t) for t in EntryType)
_ENTRY_TYPES = {int(t): t for t in EntryType}
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16
assert array("Q").itemsize == 8 and array("I").itemsize == 4

WRITEV_MIN_BYTES = 256 * 1024
"""Records this big are written with pwritev of their parts: joining them would copy every payload."""

DEFAULT_FILL_BYTES = 1024 * 1024
"""How far ahead of its end the last segment is zero-filled (see the module docstring)."""

FILL_MAX_RECORD_BYTES = 64 * 1024
"""Bigger records are written without fill: writing the zeros costs more than the fsync saves."""

SECTOR_BYTES = 512
"""The smallest unit a disk writes whole: a torn overwrite leaves whole sectors of old zeros."""

_FULL = {errno.ENOSPC, errno.EDQUOT}


def segment_name(first_index: int) -> str:
    """The file name of the segment whose first entry is ``first_index``."""
    return f"{first_index:016d}.wal"


# -- encoding ----------------------------------------------------------------


def _encode_batch(entries: Sequence[Entry], keyring: Keyring | None = None) -> tuple[list[bytes], int, array[int]]:
    """Frame a batch as the parts of one record, all but the CRC trailer.

    Returns the parts, the size of the whole record (trailer included) and
    the entries' terms as a native array for the in-memory index.  Payloads
    are not copied: big records go out with writev.  ``zip(*entries)``
    splits the batch into its columns in one C-level pass; a comprehension
    per column walked the entries four times, which cost more than the
    write itself for a batch of small entries.
    """
    n = len(entries)
    extra = SEAL_OVERHEAD if keyring is not None else 0
    if n == 1:  # the common unbatched case: one struct, no arrays to swap
        e = entries[0]
        nbytes = MIN_RECORD_BYTES + PER_ENTRY_BYTES + len(e.data) + extra
        if nbytes > MAX_RECORD_BYTES:
            raise ValueError(f"a batch of {nbytes} bytes does not fit one record (at most {MAX_RECORD_BYTES})")
        if e.type not in _ENTRY_TYPES:
            raise ValueError(f"entry {e.index} has unknown type {e.type!r}")
        head = _ONE.pack(MAGIC, nbytes, e.index, 1, e.term, e.type, len(e.data))
        if keyring is not None:
            return [head, keyring.seal(e.data, head)], nbytes, array("Q", (e.term,))
        return [head, e.data], nbytes, array("Q", (e.term,))
    term_col, index_col, type_col, datas = zip(*entries, strict=True)  # one C-level pass over the batch
    first = index_col[0]
    if index_col != tuple(range(first, first + n)):
        k = next(k for k, i in enumerate(index_col) if i != first + k)
        raise ValueError(f"batch is not consecutive: index {index_col[k]} at position {k} after {first}")
    types = bytes(type_col)
    if types.translate(None, _VALID_TYPES):
        raise ValueError(f"batch holds an entry of unknown type (types {sorted(set(types))})")
    terms = array("Q", term_col)
    sizes = array("I", list(map(len, datas)))
    nbytes = MIN_RECORD_BYTES + PER_ENTRY_BYTES * n + sum(sizes) + extra
    if nbytes > MAX_RECORD_BYTES:
        raise ValueError(f"a batch of {nbytes} bytes does not fit one record (at most {MAX_RECORD_BYTES})")
    if _SWAP:
        terms.byteswap()
        term_bytes = terms.tobytes()
        terms.byteswap()
        sizes.byteswap()
    else:
        term_bytes = terms.tobytes()
    parts = [_HEAD.pack(MAGIC, nbytes, first, n), term_bytes, types, sizes.tobytes()]
    if keyring is not None:
        head = b"".join(parts)
        return [head, keyring.seal(b"".join(datas), head)], nbytes, terms
    parts += datas
    return parts, nbytes, terms


def _marker(first: int) -> bytes:
    """A record without entries: "the log from ``first`` on is empty"."""
    head = _HEAD.pack(MAGIC, MIN_RECORD_BYTES, first, 0)
    return head + _CRC.pack(crc32c(head))


def frame_batch(entries: Sequence[Entry], keyring: Keyring | None = None) -> bytes:
    """The exact bytes :meth:`WriteAheadLog.append` writes for this batch (sealed: one such)."""
    parts, _, _ = _encode_batch(entries, keyring)
    body = b"".join(parts)
    return body + _CRC.pack(crc32c(body))


# -- writing -----------------------------------------------------------------


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write every byte at ``offset``; ``os.pwrite`` may write less than asked."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pwrite_parts(fd: int, parts: list[bytes | memoryview], nbytes: int, offset: int) -> None:
    """Write the parts back to back from ``offset``: one pwritev per IOV_MAX parts (short writes aside)."""
    if len(parts) <= _IOV_MAX:  # the common case
        done = os.pwritev(fd, parts, offset)
        if done < nbytes:
            _finish_parts(fd, parts, done, offset)
        return
    for s in range(0, len(parts), _IOV_MAX):
        chunk = parts[s:s + _IOV_MAX]
        size = sum(map(len, chunk))
        done = os.pwritev(fd, chunk, offset)
        if done < size:
            _finish_parts(fd, chunk, done, offset)
        offset += size


def _finish_parts(fd: int, parts: list[bytes | memoryview], done: int, offset: int) -> None:
    """After a short write of ``done`` bytes of ``parts`` at ``offset``, write the rest part by part."""
    pos = offset + done
    for part in parts:
        n = len(part)
        if done >= n:
            done -= n
            continue
        _pwrite_all(fd, memoryview(part)[done:], pos)
        pos += n - done
        done = 0


def _record_buffers(parts: list[bytes], nbytes: int) -> list[bytes | memoryview]:
    """The buffers of one whole record: ``parts``, then their CRC.

    Small records are joined first (one copy, then one CRC call over the
    lot: cheaper than a CRC call per part); big ones keep their parts so
    their payloads are never copied in user space.
    """
    if nbytes < WRITEV_MIN_BYTES:
        body = b"".join(parts)
        return [body, _CRC.pack(crc32c(body))]
    crc = 0
    for part in parts:
        crc = crc32c_extend(crc, part)
    return [*parts, _CRC.pack(crc)]


# -- reading -----------------------------------------------------------------


class _BadRecord(Exception):
    """Internal: the record at some offset is not valid.

    ``end`` is where the record claims to end (None if past the end of the
    file); ``may_be_torn`` is False for damage no torn write can cause.
    """

    def __init__(self, problem: str, end: int | None, may_be_torn: bool = True) -> None:
        super().__init__(problem)
        self.problem = problem
        self.end = end
        self.may_be_torn = may_be_torn


def _check_record(data: bytes, view: memoryview, pos: int) -> tuple[int, int, int]:
    """``(end, first, count)`` of the record at ``pos`` once its framing and CRC are checked."""
    size = len(data)
    present = data[pos:pos + 4]
    if present != MAGIC[:len(present)]:
        raise _BadRecord(f"no record marker (want {MAGIC!r}, the format-2 magic; found {present!r})",
                         pos + len(present))
    if size - pos < HEADER_BYTES:
        raise _BadRecord(f"record header cut short ({size - pos} of {HEADER_BYTES} bytes)", None)
    _, length = _FRAME.unpack_from(data, pos)
    if length < MIN_RECORD_BYTES:
        raise _BadRecord(f"record length {length} is below the minimum {MIN_RECORD_BYTES}", pos + 8)
    end = pos + length
    if end > size:
        raise _BadRecord(f"record of {length} bytes runs past the end of the file", None)
    (crc,) = _CRC.unpack_from(data, end - TRAILER_BYTES)
    if crc32c(data[pos:end - TRAILER_BYTES]) != crc:
        raise _BadRecord("checksum mismatch", end)
    first, count = _FIRST_COUNT.unpack_from(data, pos + 8)
    if MIN_RECORD_BYTES + PER_ENTRY_BYTES * count > length:
        raise _BadRecord(f"{count} entries cannot fit a record of {length} bytes", end, may_be_torn=False)
    return end, first, count


def _columns(data: bytes, pos: int, end: int, count: int,
             sealed: bool = False) -> tuple[array[int], bytes, array[int], int]:
    """The term, type and size columns of a checked record, and where its data starts."""
    p = pos + HEADER_BYTES
    terms = array("Q", data[p:p + 8 * count])
    p += 8 * count
    types = data[p:p + count]
    p += count
    sizes = array("I", data[p:p + 4 * count])
    p += 4 * count
    if _SWAP:
        terms.byteswap()
        sizes.byteswap()
    extra = SEAL_OVERHEAD if sealed and count else 0
    if p + sum(sizes) + extra + TRAILER_BYTES != end:
        raise _BadRecord("entry sizes do not add up to the record length", end, may_be_torn=False)
    if types.translate(None, _VALID_TYPES):
        raise _BadRecord("unknown entry type", end, may_be_torn=False)
    return terms, types, sizes, p


def _decode(data: bytes, pos: int, end: int, first: int, count: int, lo: int, hi: int,
            keyring: Keyring | None = None, path: Path | None = None) -> list[Entry]:
    """Entries ``lo <= index < hi`` of the checked record at ``pos`` (opened first if sealed)."""
    terms, types, sizes, p = _columns(data, pos, end, count, keyring is not None)
    if keyring is not None and count:
        data = keyring.open(memoryview(data)[p:end - TRAILER_BYTES], data[pos:p],
                            path if path is not None else "write-ahead log")
        p = 0
    offs = list(accumulate(sizes, initial=p))
    kinds = _ENTRY_TYPES
    return [Entry(terms[k], first + k, kinds[types[k]], data[offs[k]:offs[k + 1]])
            for k in range(lo - first, hi - first)]


@dataclass(eq=False)
class _Segment:
    """One segment file and the in-memory index of its live records.

    Entry ``first + k`` has term ``terms[k]``; it lives in the last record
    ``r`` with ``rec_first[r] <= first + k``, at ``rec_off[r]`` for
    ``rec_len[r]`` bytes.  Records replaced by a later one are forgotten.
    ``rec_appended[r]`` says the record replaced nothing when it was
    written: only then does cutting the file at its start leave exactly the
    entries before it (cutting off a record that replaced a suffix would
    bring the suffix back).
    """

    first: int
    path: Path
    size: int = 0
    terms: array[int] = field(default_factory=lambda: array("Q"))
    rec_first: array[int] = field(default_factory=lambda: array("Q"))
    rec_off: array[int] = field(default_factory=lambda: array("Q"))
    rec_len: array[int] = field(default_factory=lambda: array("Q"))
    rec_appended: array[int] = field(default_factory=lambda: array("B"))

    @property
    def last(self) -> int:
        return self.first + len(self.terms) - 1

    def record_of(self, index: int) -> int:
        """Position in the rec_* arrays of the record holding ``index``."""
        return bisect.bisect_right(self.rec_first, index) - 1

    def add(self, first: int, offset: int, nbytes: int, terms: array[int]) -> None:
        """Account for a record of entries ``first...`` at ``offset``, replacing any from ``first`` on."""
        appended = first > self.last
        if not appended:
            self.forget_from(first)
        if terms:
            self.rec_first.append(first)
            self.rec_off.append(offset)
            self.rec_len.append(nbytes)
            self.rec_appended.append(appended)
            self.terms.extend(terms)

    def forget_from(self, index: int) -> None:
        """Drop entries ``>= index`` from the index (not from the file)."""
        r = self.record_of(index)
        if r >= 0 and self.rec_first[r] < index:
            r += 1
        del self.rec_first[r:], self.rec_off[r:], self.rec_len[r:], self.rec_appended[r:]
        del self.terms[index - self.first:]


class _MarkerDidNotFit(Exception):
    """A truncation marker met a full disk and was cut back: ``error`` is the DiskFullError to raise."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


class _Torn(Exception):
    """Internal: the last segment ends in a torn write at ``offset``."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _content_end(data: bytes) -> int:
    """Offset just past the last non-zero byte of ``data`` (0 if all zeros).

    Scans backwards in growing slices: the zero fill at the end of a tail
    segment is at most a few MiB, and stripping a copy of the whole
    segment would cost more than the scan.
    """
    end, step = len(data), 4096
    while end > 0:
        lo = max(0, end - step)
        kept = len(data[lo:end].rstrip(b"\0"))
        if kept:
            return lo + kept
        end, step = lo, min(step * 2, 1 << 20)
    return 0


def _has_unwritten_sector(data: bytes, start: int, end: int) -> bool:
    """Whether some disk sector's share of ``data[start:end]`` is all zeros.

    A record written over zero fill is an overwrite in place: if the power
    fails before its fsync returns, any subset of its sectors may have
    reached the disk, leaving the zeros of the others.  (Etcd's WAL reads
    its preallocated segments by the same rule.)  Only records already
    found bad are asked about.  A middle share is a whole sector; the first
    holds part of the magic, never zero in a written record; the last
    holds the end of the CRC, whose last byte is zero once in 256 records.
    """
    end = min(end, len(data))
    a = start
    while a < end:
        b = min((a // SECTOR_BYTES + 1) * SECTOR_BYTES, end)
        if data.count(0, a, b) == b - a:
            return True
        a = b
    return False


def _scan(seg: _Segment, data: bytes, is_tail: bool, sealed: bool = False) -> None:
    """Check every record of a segment file's ``data`` and index its entries into ``seg``.

    In the last segment, zeros from a record boundary to the end of the
    file are its zero fill, the end of the log; ``seg.size`` is then the
    end of the last valid record.  Raises :class:`_Torn` for a torn write
    when ``is_tail`` allows one, otherwise :class:`CorruptionError`.
    """
    view = memoryview(data)
    pos = 0
    content_end = _content_end(data) if is_tail else len(data)
    while pos < content_end:  # a valid record may end past content_end (its CRC ends in a zero byte)
        try:
            end, first, count = _check_record(data, view, pos)
            if not seg.first <= first <= seg.last + 1:
                raise _BadRecord(f"record of entries from {first} where {seg.first}..{seg.last + 1} "
                                 "was expected", end, may_be_torn=False)
            terms, _, _, _ = _columns(data, pos, end, count, sealed)
        except _BadRecord as bad:
            # A torn write: the record never fit, the disk persisted the
            # file's new length but not its last pages (zeros to the end),
            # or the record went over zero fill and some of its sectors
            # never left the zeros.
            if is_tail and bad.may_be_torn and (bad.end is None or content_end < bad.end
                                                or _has_unwritten_sector(data, pos, bad.end)):
                later = _next_valid_record(data, view, pos, seg.first, seg.last + 1)
                if later is None:
                    raise _Torn(pos) from None
                bad.problem += f", yet a valid record follows at offset {later}"
            raise CorruptionError(seg.path, pos, bad.problem) from None
        seg.add(first, pos, end - pos, terms)
        pos = end
    seg.size = pos


def _next_valid_record(data: bytes, view: memoryview, after: int, seg_first: int, next_index: int) -> int | None:
    """Offset of a valid record past ``after`` that could follow it, if any.

    A torn write leaves nothing valid behind it, but a flipped bit in a
    length field also makes a record seem to run past the end of the file.
    Finding an intact record behind it tells the two apart, so acknowledged
    entries are reported as corrupt instead of being cut off as torn.  Only
    records whose first index could follow count (the damaged record holds
    at most one entry per PER_ENTRY_BYTES), so a payload that happens to
    contain a record of some other log rarely fools it.
    """
    p = data.find(MAGIC, after + 1)
    while p != -1:
        try:
            _, first, _ = _check_record(data, view, p)
        except _BadRecord:
            pass
        else:
            if seg_first <= first <= next_index + (p - after) // PER_ENTRY_BYTES:
                return p
        p = data.find(MAGIC, p + 1)
    return None


class WriteAheadLog:
    """Raft's log on disk.  Create with :meth:`open`; see the module docstring."""

    def __init__(self, directory: Path, segment_bytes: int, segments: list[_Segment], fill_bytes: int,
                 keyring: Keyring | None = None) -> None:
        self._dir = directory
        self._keyring = keyring
        self._segment_bytes = segment_bytes
        self._fill_bytes = fill_bytes
        self._zeros = memoryview(bytes(min(fill_bytes, segment_bytes)))
        self._segments = segments
        self._firsts = [s.first for s in segments]
        self._fd = -1
        """The tail segment open for writing; -1 while none is (as in snapshot.py)."""
        self._filled = 0
        """Size of the tail file: bytes from the tail's logical size up to here are zeros."""
        self._failed: str | None = None
        self._open_tail()

    # -- opening and recovery ------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             fill_bytes: int = DEFAULT_FILL_BYTES, keyring: Keyring | None = None) -> WriteAheadLog:
        """Open (creating if needed) the log in ``directory`` and recover it.

        Cuts a torn tail off the last segment (and fsyncs the cut); raises
        :class:`CorruptionError` for any other damage or a missing segment.
        ``fill_bytes`` is how far ahead of its end the last segment is kept
        zero-filled (0: never; see the module docstring).  ``keyring``: the
        log's records are sealed (see the module docstring).
        """
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        if fill_bytes < 0:
            raise ValueError("fill_bytes must not be negative")
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
            segments.append(cls._recover_segment(first, path, is_tail=i == len(found) - 1,
                                                 sealed=keyring is not None))
        if not segments:
            path = d / segment_name(1)
            with disk_errors(f"cannot create {path}"):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                fsync_dir(d)
            segments.append(_Segment(1, path))
        return cls(d, segment_bytes, segments, fill_bytes, keyring)

    @staticmethod
    def _recover_segment(first: int, path: Path, is_tail: bool, sealed: bool = False) -> _Segment:
        """Index one segment; cut and fsync a torn tail if it is the last one.

        Reads the whole file at once: a segment is bounded by segment_bytes
        (or by one batch, if a batch was bigger).  The zero fill of the last
        segment stays, unless a torn record is cut (the cut drops it too).
        """
        with disk_errors(f"cannot read {path}"):
            data = path.read_bytes()
        seg = _Segment(first, path)
        try:
            _scan(seg, data, is_tail, sealed)
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
        """(Re)open the last segment for writing; learn how much zero fill it has.

        Whatever lies past the tail's logical size is zero fill: recovery
        checked it, or this object wrote it.
        """
        self._close_fd()
        with disk_errors(f"cannot open {self._segments[-1].path}"):
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
            self._filled = os.fstat(self._fd).st_size

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
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

    def size_bytes(self) -> int:
        """Bytes of log records in the segments (their logical sizes, without the zero fill)."""
        return sum(seg.size for seg in self._segments)

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

        Whole records are read (one pread per segment) so that their CRC
        is checked again.  Raises IndexError unless
        ``first_index <= lo <= hi <= last_index + 1``.
        """
        self._check_usable()
        if not self.first_index <= lo <= hi <= self.last_index + 1:
            raise IndexError(f"range [{lo}, {hi}) is outside the log [{self.first_index}, {self.last_index}]")
        out: list[Entry] = []
        index = lo
        while index < hi:
            seg, _ = self._locate(index)
            stop = min(hi, seg.last + 1)
            out += self._read_segment(seg, index, stop)
            index = stop
        return out

    def _read_segment(self, seg: _Segment, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo <= index < hi``, all in ``seg``."""
        r0, r1 = seg.record_of(lo), seg.record_of(hi - 1)
        start, stop = seg.rec_off[r0], seg.rec_off[r1] + seg.rec_len[r1]
        with disk_errors(f"cannot read {seg.path}"):
            fd = os.open(seg.path, os.O_RDONLY)
            try:
                data = os.pread(fd, stop - start, start)
            finally:
                os.close(fd)
        if len(data) != stop - start:
            raise CorruptionError(seg.path, start + len(data), "file is shorter than its index says")
        view = memoryview(data)
        out: list[Entry] = []
        for r in range(r0, r1 + 1):
            pos = seg.rec_off[r] - start
            rec_hi = seg.rec_first[r + 1] if r < r1 else hi
            try:
                end, first, count = _check_record(data, view, pos)
                if first != seg.rec_first[r] or first + count < rec_hi:
                    raise _BadRecord(f"record of entries {first}..{first + count - 1} where the index "
                                     f"expects {seg.rec_first[r]}..{rec_hi - 1}", end)
                out += _decode(data, pos, end, first, count, max(lo, first), rec_hi, self._keyring, seg.path)
            except _BadRecord as bad:
                raise CorruptionError(seg.path, seg.rec_off[r], bad.problem) from None
        return out

    def read_all(self) -> list[Entry]:
        """Every entry held, for replay at start-up."""
        return self.entries(self.first_index, self.last_index + 1)

    # -- mutations --------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"write-ahead log in {self._dir} is unusable: {self._failed}; reopen it")

    def append(self, entries: Sequence[Entry]) -> None:
        """Durably append a batch: one record, one write, one fsync (group commit).

        If ``entries[0].index <= last_index`` the conflicting suffix goes
        (Raft's log matching): when the batch lands in the last segment its
        record replaces it, at no extra cost (a crash leaves the old suffix
        or the new batch); otherwise it is truncated first, with its own
        fsync.  The batch must be consecutive and start within
        ``[first_index, last_index+1]``.

        A record that does not fit the tail's zero fill is written together
        with the next stretch of fill (same write, same fsync), so that the
        following batches overwrite zeros in place, whose fsync is cheaper.

        On a write error (a full disk) the partial write is cut back and the
        log stays usable without the batch; if only the fill did not fit, the
        record is written again without it.  An fsync error makes the log
        unusable until reopened, since the kernel may have dropped the pages.
        """
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        if not self.first_index <= first <= self.last_index + 1:
            raise ValueError(f"batch starting at {first} does not fit a log holding "
                             f"[{self.first_index}, {self.last_index}]")
        if tracing.ON:
            tracing.mark("wal.append", f"first={first} n={len(entries)}")
        parts, nbytes, terms = _encode_batch(entries, self._keyring)
        seg = self._segments[-1]
        if first <= seg.last and (first < seg.first or seg.size + nbytes > self._segment_bytes):
            self.truncate(first)  # else the batch's own record replaces the entries from `first` on
            seg = self._segments[-1]
        if seg.terms and seg.size + nbytes > self._segment_bytes:
            seg = self._roll(first)
        base = seg.size
        end = base + nbytes
        bufs = _record_buffers(parts, nbytes)
        try:
            if end <= self._filled or nbytes > FILL_MAX_RECORD_BYTES:  # over the fill, or no fill wanted
                _pwrite_parts(self._fd, bufs, nbytes, base)
                if end > self._filled:
                    self._filled = end
            else:
                self._write_with_fill(seg, bufs, nbytes, base)
        except OSError as e:
            self._undo_write(seg, base)
            raise storage_error(f"cannot append to {seg.path}", e) from e
        if tracing.ON:
            tracing.mark("wal.fsync_start", f"first={first} bytes={nbytes}")
        self._fsync(seg)
        if tracing.ON:
            tracing.mark("wal.fsync_end", f"first={first}")
        seg.add(first, base, nbytes, terms)
        seg.size = end

    def _write_with_fill(self, seg: _Segment, bufs: list[bytes | memoryview], nbytes: int, base: int) -> None:
        """Write a record at ``base``, past the fill, followed by the next stretch of zero fill.

        If the disk cannot take the fill, the partial write is cut back and
        the record is written alone: a nearly full disk still takes records.
        """
        end = base + nbytes
        fill = min(self._fill_bytes, self._segment_bytes - end)
        if fill > 0:
            try:
                _pwrite_parts(self._fd, [*bufs, self._zeros[:fill]], nbytes + fill, base)
            except OSError as e:
                if e.errno not in _FULL or not self._undo_write(seg, base):
                    raise
            else:
                self._filled = end + fill
                return
        _pwrite_parts(self._fd, bufs, nbytes, base)
        self._filled = end

    def _fsync(self, seg: _Segment) -> None:
        """fsync the tail; on failure the log is unusable (the kernel may have dropped the pages)."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            err = storage_error(f"cannot fsync {seg.path}", e)
            self._failed = str(err)
            raise err from e

    def _undo_write(self, seg: _Segment, size: int) -> bool:
        """Cut a failed write back so no half record stays in front of the next batch.

        The zero fill past ``size`` goes too (the next append writes new
        fill).  Returns False, and makes the log unusable, if the cut fails.
        """
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            self._failed = f"cannot undo a failed write to {seg.path}: {e.strerror}"
            return False
        self._filled = size
        return True

    def _roll(self, first: int) -> _Segment:
        """Start a new segment for the batch beginning at ``first``.

        The old tail's zero fill is cut off (and the cut fsynced) before the
        new file exists, so an earlier segment never holds fill and a bad
        record there is always corruption.  A failed cut makes the log
        unusable until reopened (recovery accepts the fill, or its absence,
        in what is still the last segment).
        """
        old = self._segments[-1]
        if self._filled > old.size:
            try:
                with disk_errors(f"cannot cut the zero fill of {old.path}"):
                    os.ftruncate(self._fd, old.size)
                    os.fsync(self._fd)
            except StorageError as e:
                self._failed = str(e)
                raise
            self._filled = old.size
        path = self._dir / segment_name(first)
        with disk_errors(f"cannot create segment {path}"):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
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

        Whole segments above the cut are deleted newest first.  In the
        segment holding the cut, a cut at the segment's first entry empties
        the file and a cut at the first entry of a record that replaced
        nothing shortens it there; any other cut appends a truncation
        marker, so the acknowledged entries before the cut are never
        rewritten.  Either way the file is fsynced.  A marker that meets a
        full disk is cut back and :class:`DiskFullError` raised with the log
        still usable and unchanged in that segment (the caller may try
        again, as after a full disk in :meth:`append`); any other failure
        makes the log unusable until reopened (recovery then sees the old or
        the new state, or a torn marker, which it cuts).
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
            seg = self._segments[-1]
            self._open_tail()
            r = seg.record_of(from_index)
            with disk_errors(f"cannot truncate {seg.path}"):
                if from_index == seg.first or (seg.rec_first[r] == from_index and seg.rec_appended[r]):
                    size = seg.rec_off[r] if from_index > seg.first else 0
                    os.ftruncate(self._fd, size)  # the zero fill goes too; the next append writes more
                    self._filled = size
                else:
                    size = self._write_marker(seg, from_index)
                os.fsync(self._fd)
        except _MarkerDidNotFit as e:
            # Nothing changed in this segment (the partial marker was cut back), and
            # the segments deleted before are gone on disk and here alike: the log
            # is consistent and usable, without the cut.  The caller may try again.
            raise e.error from e.error.__cause__
        except StorageError as e:
            self._failed = str(e)
            raise
        seg.forget_from(from_index)
        seg.size = size

    def _write_marker(self, seg: _Segment, from_index: int) -> int:
        """Append a truncation marker at the end of ``seg``; returns the new size.

        On a full disk the partial marker is cut back and :class:`_MarkerDidNotFit`
        raised, so a full disk while cutting a conflicting suffix leaves the
        log usable (as a full disk while appending does) instead of unusable.
        """
        marker = _marker(from_index)
        try:
            _pwrite_all(self._fd, marker, seg.size)  # over the zero fill, if any
        except OSError as e:
            if e.errno in _FULL and self._undo_write(seg, seg.size):
                err = storage_error(f"cannot truncate {seg.path}", e)
                err.__cause__ = e
                raise _MarkerDidNotFit(err) from e
            raise
        size = seg.size + len(marker)
        self._filled = max(self._filled, size)
        return size

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
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                fsync_dir(self._dir)
            self._segments.append(_Segment(next_index, path))
            self._firsts.append(next_index)
            self._open_tail()
        except StorageError as e:
            self._failed = str(e)
            raise

    # -- re-encryption -----------------------------------------------------------

    def reseal(self) -> int:
        """Seal again, under the active key, every record sealed with another; return how many.

        The re-encryption pass after a key rotation: once it has run, no
        record of the log names an old key id, and the old key can leave
        the key file.  A resealed record has exactly the size of the old one
        (the seal overhead is fixed), so every offset in the in-memory index
        stays true; each segment that needs it is rewritten whole under a
        temporary name, fsynced and renamed over the old one (a crash leaves
        the old file or the new, both readable with the key file holding
        both keys).  Records are walked in file order, superseded ones too,
        so no old-key ciphertext is left behind in a file.  Runs on the
        log's thread like every other call.
        """
        self._check_usable()
        ring = self._keyring
        if ring is None:
            return 0
        done = 0
        for seg in self._segments:
            with disk_errors(f"cannot read {seg.path}"):
                data = bytearray(seg.path.read_bytes())
            n = self._reseal_records(seg, data, ring)
            if not n:
                continue
            tmp = seg.path.with_name(f".{seg.path.name}.reseal.tmp")
            with disk_errors(f"cannot rewrite {seg.path}"):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    _pwrite_all(fd, memoryview(data), 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, seg.path)
                fsync_dir(self._dir)
            if seg is self._segments[-1]:
                self._open_tail()  # the old inode is gone
            done += n
        return done

    @staticmethod
    def _reseal_records(seg: _Segment, data: bytearray, ring: Keyring) -> int:
        """Reseal, in ``data``, the records of ``seg`` under old keys; return how many.

        Records are parsed from a read-only copy (the CRC wants one) and
        replaced in ``data`` at the same offsets.
        """
        old = bytes(data)
        view = memoryview(old)
        pos, n = 0, 0
        try:
            while pos < seg.size:
                end, _, count = _check_record(old, view, pos)
                if count:
                    _, _, _, p = _columns(old, pos, end, count, True)
                    blob = old[p:end - TRAILER_BYTES]
                    if Keyring.key_id_of(blob) != ring.active:
                        aad = old[pos:p]
                        fresh = ring.seal(ring.open(blob, aad, seg.path), aad)
                        record = aad + fresh
                        data[pos:end] = record + _CRC.pack(crc32c(record))
                        n += 1
                pos = end
        except _BadRecord as bad:
            raise CorruptionError(seg.path, pos, bad.problem) from None
        return n
