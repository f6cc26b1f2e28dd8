"""Pins and the collect barrier: what keeps garbage collection off a chunk about to be recorded.

An upload or a repair that is about to record a chunk pins it first, so
this leader proposes no collect of it, then waits until it has applied
every collect it could have proposed before the pin (the barrier).  After
that, the chunk map's answer about the chunk can no longer be changed by a
collect.  See :mod:`storg.server.files.service` for the whole argument.
"""

from __future__ import annotations

from collections import Counter

from storg.node.raft_node import RaftNode


class CollectGuard:
    """This leader's pins (nested counts per chunk) and its collect barrier."""

    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self._pins: Counter[str] = Counter()
        self._barrier_term = -1
        self._barrier_index = 0

    def pin(self, chunk_hash: str) -> None:
        """Keep this leader from proposing a collect of ``chunk_hash`` until :meth:`unpin`.

        Pins nest: uploads and repair pin the chunks they are about to record.
        """
        self._pins[chunk_hash] += 1

    def unpin(self, hashes: list[str]) -> None:
        """Undo one :meth:`pin` of each of ``hashes``."""
        for h in hashes:
            self._pins[h] -= 1
            if self._pins[h] <= 0:
                del self._pins[h]

    def pinned(self, chunk_hash: str) -> bool:
        return chunk_hash in self._pins

    def pinned_now(self) -> frozenset[str]:
        """The chunks pinned at this moment (a scan takes them once, then runs in a thread)."""
        return frozenset(self._pins)

    def barrier(self) -> int:
        """An index at or after every collect entry this leader's log holds or it proposed.

        Entries of earlier terms all sit below the log's end at the first
        call in a term; this leader's own collects raise it as proposed.  A
        chunk pinned now is collected by no entry above it.
        """
        if self._barrier_term != self.node.term:
            self._barrier_term = self.node.term
            self._barrier_index = self.node.core.last_index
        return self._barrier_index

    def raise_barrier(self) -> None:
        """Called right after proposing a collect: the barrier covers it."""
        self.barrier()
        self._barrier_index = max(self._barrier_index, self.node.core.last_index)
