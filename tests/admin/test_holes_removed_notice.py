"""A RemovedNotice is never believed by itself: the node checks, then stops only if it is true.

Regression: one frame (``RemovedNotice`` naming the node, with an index past
its log; the node id is public) stopped any node.  The legitimate flow still
works: a removed node stops by itself, even one that cannot hear Raft
traffic any more (a wiped node its peers refuse, a node the leader no
longer replicates to), because it asks the leader over connections it opens.
"""

from __future__ import annotations

import pytest
from test_admin_handlers import TICK, Harness

from storg.server.client_port import RequestError
from storg.wire.admin import MemberChanged, MemberRemoveRequest, RemovedNotice


def settle(h: Harness, seconds: float = 15.0) -> None:
    h.clock.pump([TICK] * int(seconds / TICK))


def test_a_forged_notice_to_a_member_is_acknowledged_but_stops_nothing():
    h = Harness()
    leader = h.leader()
    h.write(3)
    victim = next(n for n in h.nodes if n != leader.node_id)
    forged = RemovedNotice(1, victim, "mallory", 99, h.nodes[victim].core.last_index + 1000)
    assert isinstance(h.call(victim, forged), MemberChanged)
    settle(h)
    assert h.stopped == [] and not h.admins[victim].removed
    # Asked again and again: still nothing, and the cluster keeps working.
    for i in range(3):
        h.call(victim, RemovedNotice(2 + i, victim, leader.node_id, 1, 10**9))
    settle(h)
    assert h.stopped == []
    h.write(2)


def test_a_forged_notice_to_a_node_waiting_to_join_is_refused():
    h = Harness()
    h.leader()
    h.start("d")
    with pytest.raises(RequestError):
        h.call("d", RemovedNotice(1, "d", "a", 1, 10**6))
    settle(h, 2.0)
    assert h.stopped == []


def test_a_notice_is_not_believed_when_no_leader_can_be_asked():
    h = Harness()
    leader = h.leader()
    victim = next(n for n in h.nodes if n != leader.node_id)
    h.net.down.update(n for n in h.nodes if n != victim)  # nobody answers the check
    h.call(victim, RemovedNotice(1, victim, leader.node_id, 1, 10**6))
    settle(h, 20.0)
    assert h.stopped == []


def test_a_removed_node_that_hears_no_raft_traffic_still_stops_once_the_leader_confirms():
    h = Harness()
    leader = h.leader()
    h.write(3)
    victim = next(n for n in sorted(h.nodes) if n != leader.node_id)
    h.net.isolate(victim)  # like a wiped node its peers refuse: it never applies its removal
    done = h.call(leader.node_id, MemberRemoveRequest(1, victim))
    assert done.role == "removed"
    h.run_until(lambda: h.stopped == [victim])
    assert victim in h.nodes[victim].core.conf.members()  # its own log never learned it
