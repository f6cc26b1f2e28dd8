"""Where chunks go: least-used voters first, ties by rendezvous hashing, the unreachable last.

Placement is decided on the leader for every fresh chunk and every repair
copy.  Its inputs are the chunk map's per-node totals, the bytes uploads in
flight have placed, and :class:`Liveness`: which members answered the
leader's last probe.  Repair records the probes; uploads and repair read
them, so it lives here, below both.
"""

from __future__ import annotations

import hashlib
from typing import Any


def rendezvous(chunk_hash: str, node: str) -> bytes:
    """The rank of ``node`` for ``chunk_hash``: the same on every node, different per chunk."""
    return hashlib.sha256(f"{chunk_hash}/{node}".encode()).digest()


def place(chunk_hash: str, nodes: list[str], copies: int, usage: dict[str, int] | None = None,
          avoid: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The ``copies`` nodes a chunk goes to: least used first, never two copies on one node.

    ``usage`` is bytes held per node; nodes in ``avoid`` (unreachable) come
    last.  Ties, which are all there is on an empty cluster, go by
    rendezvous hashing, so chunks of equal usage still spread over the
    nodes instead of all ranking the same one first.
    """
    usage = usage or {}
    ranked = sorted(set(nodes), key=lambda n: (n in avoid, usage.get(n, 0), rendezvous(chunk_hash, n)))
    return ranked[:copies]


class Liveness:
    """When each member last answered a probe on its client port, as this node saw it."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._since: float | None = None
        self._last_ok: dict[str, float] = {}
        self._failing: set[str] = set()

    def reset(self) -> None:
        """Forget everything: a node that becomes leader again starts its graces anew."""
        self._since = None
        self._last_ok.clear()
        self._failing.clear()

    def record(self, node_id: str, ok: bool) -> None:
        now = self.reactor.seconds()
        if self._since is None:
            self._since = now
        if ok:
            self._last_ok[node_id] = now
            self._failing.discard(node_id)
        else:
            self._failing.add(node_id)

    def reachable(self, node_id: str) -> bool:
        """Whether the last probe of ``node_id`` succeeded (or none failed yet)."""
        return node_id not in self._failing

    def down_for(self, node_id: str) -> float:
        """Seconds ``node_id`` has been unreachable as far as this node knows (0 if reachable)."""
        if node_id not in self._failing:
            return 0.0
        now = self.reactor.seconds()
        return now - self._last_ok.get(node_id, self._since if self._since is not None else now)

    def failing(self) -> frozenset[str]:
        return frozenset(self._failing)
