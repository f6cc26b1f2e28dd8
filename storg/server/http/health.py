"""``/health`` and ``/ready``: answers for load balancers, systemd and probes.

``/health`` is 200 only when this node can serve a linearizable read *now*,
and it finds out the only honest way: it performs one, a ReadIndex round
(the leader confirms its leadership with a quorum's heartbeat answers; a
follower asks the leader), within ``HEALTH_TIMEOUT`` seconds.  A node that
knows no leader answers 503 at once, without a round.  Reads of
concurrent checks share one round (the node batches ReadIndex requests),
so a probe every second costs the cluster next to nothing.

``/ready`` is 200 when this node has caught up: it is in the cluster's
configuration, knows a leader, its Raft log is writable and it has applied
all but at most ``READY_LAG`` of the entries it knows committed.  A node
replaying its log after a restart, or still waiting to be added, is not
ready (503), though it may be perfectly healthy as a process.

Both return JSON: ``{"ok": bool, "node": ..., "reason": ...}`` plus figures.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

HEALTH_TIMEOUT = 1.0
READY_LAG = 100


def _base(node: Any) -> dict[str, Any]:
    core = node.core
    return {"node": node.node_id, "leader": core.leader or None, "term": core.term,
            "commit_index": core.commit_index, "applied_index": node.applied_index}


def health(node: Any) -> defer.Deferred:
    """Fires with ``(status, body)``: 200 after a successful ReadIndex, else 503 with the reason."""
    body = _base(node)
    if not node.core.leader:
        return defer.succeed((503, dict(body, ok=False, reason="no leader known: an election is under "
                                                                 "way or this node is cut off")))
    d = node.read_index(timeout=HEALTH_TIMEOUT)

    def ok(index: int) -> tuple[int, dict[str, Any]]:
        return 200, dict(_base(node), ok=True, reason="linearizable reads are served", read_index=index)

    def failed(failure: Any) -> tuple[int, dict[str, Any]]:
        why = failure.getErrorMessage() or failure.type.__name__
        return 503, dict(_base(node), ok=False,
                         reason=f"a linearizable read failed: {failure.type.__name__}: {why}")

    return d.addCallbacks(ok, failed)


def ready(node: Any, started: bool) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of ``/ready`` (see the module docstring)."""
    body = _base(node)
    core = node.core
    reason = ""
    if not started:
        reason = "the node is starting"
    elif node.node_id not in core.conf.members():
        reason = "this node is not in the cluster's configuration (waiting to be added?)"
    elif not core.leader:
        reason = "no leader known"
    elif node.log_full:
        reason = "the Raft log cannot be written: disk full"
    elif core.commit_index - node.applied_index > READY_LAG:
        reason = (f"catching up: applied {node.applied_index} of {core.commit_index} committed "
                  f"entries")
    if reason:
        return 503, dict(body, ok=False, reason=reason)
    return 200, dict(body, ok=True, reason="caught up")
