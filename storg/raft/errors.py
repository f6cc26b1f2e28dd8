"""Errors the consensus core raises to its *local* caller.

The core never raises on peer input (a bad or stale message is ignored);
these exceptions only answer the node's own requests, so the node can tell
a client where to go (``NotLeader.leader``) or to retry later
(``ProposalDropped``).
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the core raises."""


class ProposalRefused(RaftError):
    """A proposal (or read, or transfer) was not accepted; nothing was appended."""


class NotLeader(ProposalRefused):
    """This node is not the leader; ``leader`` is a hint ("" if unknown)."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(ProposalRefused):
    """The leader refused for now: retry later.

    Reasons: the uncommitted tail is over its bound, a leadership transfer is
    in progress, a configuration change is still uncommitted, or the leader
    has not committed an entry of its own term yet (conf changes only).
    """


class ProposalTooLarge(ProposalRefused):
    """The command is over the core's ``max_entry_bytes``: never retry it, anywhere.

    Not a ProposalDropped (which says "later"): an entry too big for one
    APPEND between peers could never commit, and everything proposed after
    it would wait behind it until the leader died.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"command of {size} bytes is over the proposal limit of {limit} bytes "
                         "(limits.max_proposal_bytes)")
        self.size = size
        self.limit = limit
