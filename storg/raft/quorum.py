"""Majority arithmetic and membership changes, kept apart from the state machine.

These are pure functions on plain values so the rules (what a majority is,
which index a majority holds, how one-server changes transform a
configuration) can be read and tested on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from storg.raft.types import ConfChange, ConfChangeType, ConfState


def majority(n: int) -> int:
    """Smallest number of voters that forms a quorum among ``n`` voters."""
    return n // 2 + 1


def committed_index(voters: Iterable[str], match: Mapping[str, int]) -> int:
    """The largest index that a majority of ``voters`` holds (0 if none).

    A voter missing from ``match`` counts as holding nothing.
    """
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    if not indexes:
        return 0
    return indexes[majority(len(indexes)) - 1]


def has_quorum(voters: frozenset[str], ids: Iterable[str]) -> bool:
    """True if ``ids`` contains a majority of ``voters``."""
    if not voters:
        return False
    return len(voters.intersection(ids)) >= majority(len(voters))


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def vote_result(voters: frozenset[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally ``votes`` (id -> granted) counting only ``voters``."""
    if not voters:
        return VoteResult.LOST
    need = majority(len(voters))
    granted = sum(1 for v, ok in votes.items() if ok and v in voters)
    rejected = sum(1 for v, ok in votes.items() if not ok and v in voters)
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def apply_conf_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after one single-server change.

    ADD_VOTER adds a voter or promotes a learner; ADD_LEARNER adds a learner
    or demotes a voter; REMOVE drops the server from both sets.  A change
    that names a server already in the requested state is the identity.
    """
    nid = cc.node_id
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.type == ConfChangeType.ADD_VOTER:
        voters.add(nid)
        learners.discard(nid)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        voters.discard(nid)
        learners.add(nid)
    else:
        voters.discard(nid)
        learners.discard(nid)
    return ConfState(frozenset(voters), frozenset(learners))
