"""The in-memory Raft log: a snapshot prefix, then entries, with bookkeeping.

The log holds every entry after the last snapshot (the node persists them
too; the core keeps its own copy so it never has to ask the driver).  Three
marks describe the tail:

* ``committed``: known committed (never moves back);
* ``emitted``: last index handed to the driver in a Ready (to persist);
* ``stable``: last index the driver confirmed persisted (``advance``).  The
  leader counts its own log as replicated only up to here.

Truncating a conflicting suffix pulls ``emitted`` and ``stable`` back so the
replacement entries are emitted again and never counted before persisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from storg.raft.types import ConfState, Entry, SnapshotMeta


class RaftLog:
    """Entries after ``snapshot.index``, with term lookups and tail marks."""

    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry] = ()) -> None:
        self.snapshot = snapshot
        self._ents: list[Entry] = []
        for i, e in enumerate(entries):
            if e.index != snapshot.index + 1 + i:
                raise ValueError("persisted entries are not consecutive after the snapshot")
            self._ents.append(e)
        self.committed = snapshot.index
        self.stable = self.last_index
        self.emitted = self.last_index

    # -- lookups ------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self._ents)

    @property
    def last_term(self) -> int:
        return self._ents[-1].term if self._ents else self.snapshot.term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the end."""
        off = index - self.snapshot.index
        if off == 0:
            return self.snapshot.term
        if 0 < off <= len(self._ents):
            return self._ents[off - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self._ents[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); with ``max_bytes``, a prefix within it (at least one)."""
        if lo < self.first_index or hi > self.last_index + 1 or lo > hi:
            raise ValueError(
                f"entries [{lo}, {hi}) outside [{self.first_index}, {self.last_index + 1}]")
        base = self.snapshot.index + 1
        ents = self._ents[lo - base:hi - base]
        if max_bytes is None or not ents:
            return ents
        total = 0
        for n, e in enumerate(ents):
            total += e.size()
            if total > max_bytes and n > 0:
                return ents[:n]
        return ents

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def first_index_of_term_at(self, index: int, floor: int) -> int:
        """First index, not below ``floor``, whose term equals the term at ``index``.

        Terms never decrease along a log, so this is a binary search.
        """
        term = self.term_at(index)
        lo = max(floor, self.first_index)
        hi = index
        while lo < hi:
            mid = (lo + hi) // 2
            if self.term_at(mid) == term:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def last_index_of_term(self, term: int, upto: int) -> int | None:
        """Largest index <= ``upto`` holding an entry of ``term``, if the log knows one."""
        upto = min(upto, self.last_index)
        lo = self.snapshot.index
        if upto < lo:
            return None
        t = self.term_at(lo)
        if t is None or t > term:
            return None
        # Largest j in [lo, upto] with term_at(j) <= term.
        hi = upto
        while lo < hi:
            mid = (lo + hi + 1) // 2
            t = self.term_at(mid)
            if t is not None and t <= term:
                lo = mid
            else:
                hi = mid - 1
        return lo if self.term_at(lo) == term else None

    # -- changes ------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that continue the log (the leader's own proposals)."""
        for e in entries:
            if e.index != self.last_index + 1:
                raise ValueError("appended entry does not continue the log")
            self._ents.append(e)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs in term; 0 if none."""
        for e in entries:
            t = self.term_at(e.index)
            if t is None or t != e.term:
                return e.index
        return 0

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Replace everything from ``entries[0].index`` on with ``entries``."""
        if not entries:
            return
        start = entries[0].index
        if start <= self.snapshot.index or start > self.last_index + 1:
            raise ValueError("entries do not attach to the log")
        del self._ents[start - self.snapshot.index - 1:]
        self._ents.extend(entries)
        self.emitted = min(self.emitted, start - 1)
        self.stable = min(self.stable, start - 1)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it, never past the log's end)."""
        index = min(index, self.last_index)
        if index > self.committed:
            self.committed = index
            return True
        return False

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by ``snapshot`` (the follower lagged behind it)."""
        self.snapshot = snapshot
        self._ents = []
        self.committed = snapshot.index
        self.emitted = snapshot.index
        # Nothing of the new log is known persisted until the driver confirms.
        self.stable = 0

    def compact(self, index: int, conf: ConfState) -> SnapshotMeta:
        """Drop entries up to ``index`` (which must be in the log) into a snapshot."""
        term = self.term_at(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        del self._ents[:index - self.snapshot.index]
        self.snapshot = SnapshotMeta(index, term, conf)
        return self.snapshot

    # -- driver bookkeeping -------------------------------------------------

    def unemitted(self) -> list[Entry]:
        """Entries not yet handed to the driver for persisting."""
        if self.emitted >= self.last_index:
            return []
        return self._ents[self.emitted - self.snapshot.index:]

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted up to (index, term); ignored if since replaced."""
        if self.term_at(index) == term and index > self.stable:
            self.stable = index
