"""The cluster as this node sees it, for the status page's ``/api/status``.

A node knows its own figures and, if it leads, its followers' match
indexes; it does not know other members' roles, terms or applied indexes.
So every ``POLL_INTERVAL`` seconds, on the reactor, it asks each other
member's client port for its status row (the request ``storgctl status``
sends, allowed to every member's node certificate), through the node's own
dialer (TLS demanding that member's certificate).  A member that has not
answered within ``UNREACHABLE_AFTER`` seconds is *unreachable* from here.

From that: the cluster is *healthy* when this node knows a leader and
every voter answers, *degraded* when a leader is known but some voter does
not answer, *unavailable* when no leader is known or fewer than a quorum
of voters answer.  Failure tolerance is how many more voters may stop with
a quorum left: reachable voters minus the quorum.  When this node has no
leader and hears no member, the page says this node is cut off rather
than that the cluster is down: it is seen from here.

The leader history is what this node observed (its role watcher), since it
started: when the leader changed, to whom, in which term, and why as far as
this node can tell (an election after the old leader fell silent, a hand-
over, this node's own election).  Bounded to ``HISTORY`` entries.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from storg.fsm.members import MemberDirectory
from storg.raft.types import Role, SoftState
from storg.server.http.families import Sources
from storg.wire import StatusReply, StatusRequest

log = Logger(namespace="storg.http.view")

POLL_INTERVAL = 1.0
REQUEST_TIMEOUT = 1.0
UNREACHABLE_AFTER = 2.5
"""Seconds without an answer before a member is shown unreachable: two polls and a half."""
RETRY_DOWN = 5.0
"""Seconds between two attempts on a member that failed, unless the peer transport's link to it
is up again (then at once): a dead member costs a connection attempt (and its log lines)
every few seconds, not every second, and a member that comes back is seen within a poll."""
HISTORY = 50


@dataclass
class Seen:
    """The last answer of one member, and when it came (reactor seconds)."""

    row: dict[str, Any] | None = None
    at: float | None = None
    error: str = ""


class ClusterView:
    """Polls the other members and assembles ``/api/status``; reactor thread only."""

    def __init__(self, sources: Sources, directory: MemberDirectory, dialer: Callable[..., Any], reactor: Any,
                 free_bytes: Callable[[], int | None], address_of: Callable[[str], str]) -> None:
        self.sources = sources
        self.directory = directory
        self.dialer = dialer
        self.reactor = reactor
        self.free_bytes = free_bytes
        self.address_of = address_of
        self.seen: dict[str, Seen] = {}
        self._failed_at: dict[str, float] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._connections: dict[str, Any] = {}
        self._polling: set[str] = set()
        self._loop: LoopingCall | None = None
        self._last_soft: SoftState | None = None
        self._started_wall = time.time()

    def start(self) -> None:
        node = self.sources.node
        node.on_role_change(self.on_soft_state)
        self.on_soft_state(SoftState(node.leader, node.role, node.term))
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.reactor
        self._loop.start(POLL_INTERVAL, now=True).addErrback(lambda f: log.failure("status poll loop failed", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    # -- leader history --------------------------------------------------------

    def on_soft_state(self, soft: SoftState) -> None:
        old, self._last_soft = self._last_soft, soft
        if old is not None and old.leader == soft.leader:
            return
        me = self.sources.node_id
        if not soft.leader:
            why = ("this node stepped down" if old is not None and old.leader == me
                   else f"lost contact with {old.leader}" if old is not None and old.leader
                   else "no leader known yet")
        elif soft.leader == me:
            why = "this node won the election"
        elif old is None or not old.leader:
            why = "a leader was elected" if old is not None else "leader known at start"
        else:
            why = f"{soft.leader} replaced {old.leader}"
        self.history.append({"time": time.time(), "term": soft.term, "leader": soft.leader or None,
                             "reason": why})

    # -- polling ---------------------------------------------------------------

    def poll(self) -> None:
        """Ask every other member for its row (at most one request in flight per member)."""
        me = self.sources.node_id
        members = self.directory.members()
        for nid in list(self.seen):
            if nid not in members:
                del self.seen[nid]
                conn = self._connections.pop(nid, None)
                if conn is not None:
                    conn.close()
        now = self.reactor.seconds()
        linked = self.sources.transport.connected_peers()
        for nid in members:
            failed = self._failed_at.get(nid)
            if failed is not None and nid not in linked and now - failed < RETRY_DOWN:
                continue
            if nid != me and nid not in self._polling:
                self._polling.add(nid)
                defer.Deferred.fromCoroutine(self._ask(nid)).addBoth(self._asked, nid)

    def _asked(self, result: object, nid: str) -> None:
        self._polling.discard(nid)

    async def _ask(self, nid: str) -> None:
        seen = self.seen.setdefault(nid, Seen())
        try:
            conn = self._connections.get(nid)
            if conn is None or not conn.usable:
                address = self.address_of(nid)
                if not address:
                    raise RuntimeError("no client address known")
                conn = await self.dialer(self.reactor, address, timeout=REQUEST_TIMEOUT, node=nid)
                self._connections[nid] = conn
            d = conn.request(lambda rid: StatusRequest(rid))
            d.addTimeout(REQUEST_TIMEOUT, self.reactor)
            reply = await d
            if not isinstance(reply, StatusReply):
                raise RuntimeError(f"answered {type(reply).__name__}")
            r = reply.row
            seen.row = {"role": r.role, "term": r.term, "leader": r.leader, "commit_index": r.commit_index,
                        "applied_index": r.applied_index, "last_index": r.last_index}
            seen.at = self.reactor.seconds()
            seen.error = ""
            self._failed_at.pop(nid, None)
        except Exception as exc:
            seen.error = str(exc) or type(exc).__name__
            self._failed_at[nid] = self.reactor.seconds()
            conn = self._connections.pop(nid, None)
            if conn is not None:
                conn.close()

    # -- the JSON --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``/api/status``: built on the reactor from the node and the last answers, O(members)."""
        src = self.sources
        node, core = src.node, src.node.core
        now = self.reactor.seconds()
        me = src.node_id
        conf = core.conf
        voters = set(conf.voters)
        members = set(self.directory.members()) | set(conf.members()) | {me}
        usage = src.fsm.usage()
        heard = src.transport.stats.last_heard
        leader = core.leader or None
        progress = core.progress() if core.role == Role.LEADER else {}
        rows = []
        for nid in sorted(members):
            if nid == me:
                row: dict[str, Any] | None = dict(node.status())
                age: float | None = 0.0
                reachable = True
                error = ""
            else:
                seen = self.seen.get(nid, Seen())
                age = None if seen.at is None else now - seen.at
                peer_age = now - heard[nid] if nid in heard else None
                if peer_age is not None and (age is None or peer_age < age):
                    age = peer_age
                reachable = seen.at is not None and now - seen.at <= UNREACHABLE_AFTER
                row = dict(seen.row) if seen.row is not None else None
                error = "" if reachable else (seen.error or "no answer yet")
            entry: dict[str, Any] = {
                "id": nid, "voter": nid in voters, "reachable": reachable,
                "role": (row or {}).get("role", "unknown") if reachable else "unreachable",
                "term": (row or {}).get("term"), "commit_index": (row or {}).get("commit_index"),
                "applied_index": (row or {}).get("applied_index"),
                "last_contact_seconds": None if age is None else round(age, 3),
                "held_bytes": usage.get(nid, 0), "error": error,
                "match_index": progress[nid].match if nid in progress else None,
            }
            if row is not None and row.get("role") == "leader" and reachable:
                leader = leader or nid
            rows.append(entry)
        leader_commit = core.commit_index
        for entry in rows:
            if entry["id"] == leader and entry["commit_index"] is not None:
                leader_commit = entry["commit_index"]
        for entry in rows:
            applied = entry["applied_index"]
            entry["lag"] = None if applied is None or not entry["reachable"] else max(0, leader_commit - applied)
        reachable_voters = sum(1 for e in rows if e["voter"] and e["reachable"])
        quorum = len(voters) // 2 + 1 if voters else 0
        if not leader or not voters or reachable_voters < quorum:
            health = "unavailable"
        elif reachable_voters < len(voters):
            health = "degraded"
        else:
            health = "healthy"
        others = [e for e in rows if e["id"] != me]
        cut_off = not core.leader and bool(others) and not any(e["reachable"] for e in others)
        return {
            "node": me, "time": time.time(), "started": self._started_wall,
            "health": health, "leader": leader, "term": core.term,
            "voters": len(voters), "quorum": quorum, "reachable_voters": reachable_voters,
            "failure_tolerance": max(0, reachable_voters - quorum) if health != "unavailable" else 0,
            "cut_off": cut_off,
            "members": rows,
            "leader_history": list(reversed(self.history)),
            "replication": self._replication(),
            "disk": {"free_bytes": self.free_bytes(), "reserve_bytes": src.reserve.reserve_bytes,
                     "full": bool(src.reserve.full), "wal_bytes": src.log_store.log_bytes},
        }

    def _replication(self) -> dict[str, Any]:
        src = self.sources
        stats = src.fsm.stats()
        repairer, scrub = src.repairer, src.scrubber
        leader_counts = src.node.is_leader() and repairer.rounds
        return {
            "files": stats["files"], "bytes": stats["bytes"], "chunks": stats["chunks"],
            "under_replicated": repairer.under_replicated if leader_counts else scrub.under_replicated,
            "counted_by": "leader's repair round" if leader_counts else "this node's last scrub",
            "lost": repairer.lost if leader_counts else None,
            "repair_queue": repairer.queued if leader_counts else None,
            "repair_copies": repairer.counters["copies"], "repair_bytes": repairer.counters["bytes"],
            "scrub_passes": scrub.counters["passes"], "bad_copies": scrub.counters["bad_copies"],
            "scrub_running": bool(scrub.running),
        }
