"""Raft's safety properties, checked incrementally over a whole simulated run.

The checker keeps a global history ("over all time") instead of comparing
live logs pairwise after every step: each property is checked at the moment
a node does something that could break it, which keeps a check O(1) per
event and still catches a violation at the step that caused it.

* Election Safety: at most one leader per term, ever.
* Log Matching: every (index, term) pair ever persisted by any node names one
  entry (same type and data) with one predecessor term.  By induction on the
  index this is exactly "same index and term => identical logs up to there".
* Leader Completeness: when a node becomes leader of term T, every entry any
  node has seen committed is in its log (or covered by its snapshot).
* State Machine Safety: no two nodes (nor one node across restarts) apply
  different entries at one index; a restored snapshot's state equals the
  state every other node had at that index.
* Applied only grows: within one incarnation applied indexes are contiguous
  and increasing; a persisted hard state never moves its term back nor
  changes its vote within a term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from storg.raft.types import Entry, HardState, SnapshotMeta


class SafetyViolation(Exception):
    """A Raft safety property was broken; the message says which and where."""


class SafetyChecker:
    """Global history of a simulated cluster, and the checks against it."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, str] = {}
        self.entry_at: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.committed: dict[int, tuple[int, int]] = {}  # index -> (term, seen in term)
        self.applied_at: dict[int, tuple[int, int, bytes]] = {}
        self.digest_at: dict[int, bytes] = {}
        self.index_of_command: dict[bytes, int] = {}
        self.snapshot_term: dict[int, int] = {}
        self.leaders_elected = 0
        self._max_committed = 0

    def max_committed(self) -> int:
        """The highest index any node has been seen to commit."""
        return self._max_committed

    @staticmethod
    def fail(text: str) -> NoReturn:
        raise SafetyViolation(text)

    # -- Election Safety and Leader Completeness ---------------------------

    def on_leader(self, node: str, term: int, first_index: int,
                  term_at: Callable[[int], int | None]) -> None:
        """A node was seen as leader of ``term``; called once per (node, term).

        ``term_at(i)`` is the leader's log lookup; entries at or below
        ``first_index - 1`` are in its snapshot, which State Machine Safety
        already ties to the committed history.
        """
        other = self.leader_of_term.get(term)
        if other is not None and other != node:
            self.fail(f"Election Safety: {other} and {node} both leader of term {term}")
        if other is None:
            self.leader_of_term[term] = node
            self.leaders_elected += 1
        for index, (eterm, seen_in) in self.committed.items():
            if index < first_index or seen_in >= term:
                continue
            have = term_at(index)
            if have != eterm:
                self.fail(f"Leader Completeness: {node} leader of term {term} lacks "
                          f"committed entry {index} (term {eterm}); has term {have}")

    def on_commit(self, node: str, index: int, term: int | None, node_term: int) -> None:
        """``node`` (now in ``node_term``) commits ``index``, held with ``term``.

        ``term`` is None when the node no longer has the entry in its log
        (compacted, or jumped over by a snapshot): nothing to compare then.
        The entry was committed by a leader of a term no later than
        ``node_term`` (a node learns commits only from leaders of its own
        term), so Leader Completeness binds every leader of a later term.
        """
        if term is None:
            return
        known = self.committed.get(index)
        if known is None:
            self.committed[index] = (term, node_term)
            if index > self._max_committed:
                self._max_committed = index
        elif known[0] != term:
            self.fail(f"committed entry {index} has term {known[0]} on one node and "
                      f"{term} on {node}")
        elif node_term < known[1]:
            self.committed[index] = (term, node_term)

    # -- Log Matching -----------------------------------------------------

    def on_persist(self, node: str, entry: Entry, prev_term: int) -> None:
        key = (entry.index, entry.term)
        value = (prev_term, int(entry.type), entry.data)
        known = self.entry_at.get(key)
        if known is None:
            self.entry_at[key] = value
        elif known != value:
            self.fail(f"Log Matching: {node} persisted entry {entry.index} term "
                      f"{entry.term} as {value!r}, another node as {known!r}")

    def on_snapshot_persist(self, node: str, meta: SnapshotMeta) -> None:
        known = self.snapshot_term.get(meta.index)
        if known is None:
            self.snapshot_term[meta.index] = meta.term
        elif known != meta.term:
            self.fail(f"{node} has a snapshot at {meta.index} with term {meta.term}; "
                      f"another has term {known}")
        committed = self.committed.get(meta.index, (None,))[0]
        if committed is not None and committed != meta.term:
            self.fail(f"{node} snapshot at {meta.index} term {meta.term} but the "
                      f"committed entry there has term {committed}")

    @staticmethod
    def on_hard_state(node: str, old: HardState, new: HardState) -> None:
        if new.term < old.term:
            SafetyChecker.fail(f"{node} persisted term {new.term} after {old.term}")
        if new.term == old.term and old.vote and new.vote != old.vote:
            SafetyChecker.fail(f"{node} voted for {old.vote} and then {new.vote!r} "
                               f"in term {new.term}")

    # -- State Machine Safety --------------------------------------------

    def on_apply(self, node: str, entry: Entry, digest: bytes) -> None:
        value = (entry.term, int(entry.type), entry.data)
        known = self.applied_at.get(entry.index)
        if known is None:
            self.applied_at[entry.index] = value
            self.digest_at[entry.index] = digest
            if entry.data and entry.type == 0:
                seen = self.index_of_command.setdefault(entry.data, entry.index)
                if seen != entry.index:
                    self.fail(f"command {entry.data!r} applied at {seen} and {entry.index}")
        elif known != value:
            self.fail(f"State Machine Safety: {node} applied {value!r} at {entry.index}, "
                      f"another node applied {known!r}")
        elif self.digest_at[entry.index] != digest:
            self.fail(f"State Machine Safety: {node}'s state after {entry.index} differs")
        committed = self.committed.get(entry.index, (None,))[0]
        if committed is not None and committed != entry.term:
            self.fail(f"{node} applied entry {entry.index} term {entry.term}; "
                      f"committed term there is {committed}")

    def on_restore(self, node: str, index: int, digest: bytes) -> None:
        known = self.digest_at.get(index)
        if known is None:
            self.digest_at[index] = digest
        elif known != digest:
            self.fail(f"State Machine Safety: {node} restored a snapshot at {index} "
                      f"whose state differs from what others applied")
