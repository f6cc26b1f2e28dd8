"""Cluster administration on the leader: membership changes and leadership transfer.

The Raft core changes membership one server at a time and knows nothing of
addresses or of "caught up"; this module turns the operator's intent into
that sequence:

* ``member add``: propose ADD_LEARNER (its context carries the addresses, so
  every node learns where the newcomer listens when the entry applies), wait
  until the learner's replication progress is within :data:`CATCH_UP_SLACK`
  entries of the leader's log, then propose ADD_VOTER.  Adding a learner
  first keeps a lagging newcomer from counting in the quorum: a voter that
  needs minutes of log would stall every commit of a small cluster.
* ``member remove``: removing the leader first hands leadership to another
  voter, and the new leader removes the old one.  After a removal commits,
  the leader stops replicating to the removed node, which therefore never
  learns that its removal committed; the leader tells it with a
  :class:`~storg.wire.admin.RemovedNotice` and the removed node stops.
  The notice arrives on the client port, which anyone can reach, and the
  node id it names is public: so it is never believed by itself.  It only
  makes the node check (:meth:`MembershipAdmin.removed_notice`): the node
  stops if its own applied configuration no longer has it (the REMOVE
  entry committed and applied here), or else if the leader, asked over
  connections this node opens to the client addresses of the members it
  knows, lists the membership without it.  That second way keeps the
  legitimate cases working where this node can never apply its removal: a
  removed node the leader no longer replicates to, and a node that came
  back with an empty data_dir and is refused by its peers.  A node waiting
  to join (no configuration yet) was never a member and ignores notices.
* ``leader transfer``: wait until the target holds the whole log (the core
  gives up a transfer after an election timeout), then transfer.

Every step is idempotent against the cluster's state: a client that lost
the leader mid-way sends the same request to the new leader, which carries
on from where the membership is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from storg.config import NODE_ID_RE, parse_address
from storg.node.raft_node import RaftNode, Timeout
from storg.raft.errors import NotLeader, ProposalDropped
from storg.raft.types import ConfChange, ConfChangeType, Role
from storg.server.client_port import RequestError
from storg.wire import CODEC, ErrorCode, MemberAddress
from storg.wire.admin import (
    LEARNER,
    REMOVED,
    VOTER,
    LeaderTransferDone,
    LeaderTransferRequest,
    MemberAddProgress,
    MemberAddRequest,
    MemberChanged,
    MemberInfo,
    MemberListReply,
    MemberListRequest,
    MemberRemoveRequest,
    RemovedNotice,
)

log = Logger(namespace="storg.admin")

CATCH_UP_SLACK = 64
"""A learner this close to the leader's last index is promoted: the rest
arrives in the next few appends, well within one heartbeat of a voter's lag."""

POLL_SECONDS = 0.1
PROGRESS_EVERY = 1.0
"""Progress frames are sent when the learner moves, and at least this often
so the client can tell a slow catch-up from a dead leader."""

PROPOSE_RETRY_SECONDS = 10.0
"""How long a conf change is retried while the core refuses it for a moment
(another change uncommitted, a new leader's first entry, a transfer)."""

TRANSFER_ATTEMPTS = 3
NOTICE_ATTEMPTS = 10
CHECK_ATTEMPTS = 10
"""Rounds of asking the members for the leader's membership after a removal notice."""
CHECK_RETRY_SECONDS = 1.0


def _sleep(reactor: Any, seconds: float) -> defer.Deferred:
    return deferLater(reactor, seconds, lambda: None)


class MembershipAdmin:
    """The client-port handlers of ``member ...`` and ``leader transfer``."""

    def __init__(self, node: RaftNode, directory: Any, reactor: Any, *,
                 stop: Callable[[], object], connect: Callable[..., Any] | None = None,
                 catch_up_slack: int = CATCH_UP_SLACK) -> None:
        self.node = node
        self.node_id = node.node_id
        self.directory = directory
        self.reactor = reactor
        self._stop = stop
        if connect is None:
            from storg.net.connection import PLAIN
            connect = PLAIN
        self._connect = connect
        self.catch_up_slack = catch_up_slack
        self.removed = False
        self._checking = False

    @classmethod
    def for_service(cls, service: Any) -> MembershipAdmin:
        """Built from a NodeService: a removed node stops its reactor (exit status 0)."""
        reactor = service.reactor

        def stop() -> None:
            if getattr(reactor, "running", False):
                reactor.stop()

        return cls(service.node, service.directory, reactor, stop=stop, connect=service.dialer)

    def handlers(self) -> dict[type, Callable[[Any, Any], Any]]:
        return {
            MemberListRequest: self.member_list,
            MemberAddRequest: self._wrap(self.member_add),
            MemberRemoveRequest: self._wrap(self.member_remove),
            LeaderTransferRequest: self._wrap(self.leader_transfer),
            RemovedNotice: self.removed_notice,
        }

    @staticmethod
    def _wrap(fn: Callable[..., Any]) -> Callable[[Any, Any], defer.Deferred]:
        return lambda request, conn: defer.Deferred.fromCoroutine(fn(request, conn))

    # -- helpers -------------------------------------------------------------

    def _require_leader(self) -> None:
        if self.node.core.role != Role.LEADER:
            raise NotLeader(self.node.core.leader)

    def _role_of(self, node_id: str) -> str:
        conf = self.node.core.conf
        if node_id in conf.voters:
            return VOTER
        if node_id in conf.learners:
            return LEARNER
        return ""

    async def _propose(self, cc: ConfChange) -> int:
        """Propose ``cc`` and wait until it applies; returns its log index.

        Refusals that pass by themselves (another change not committed yet,
        a new leader's first entry, a transfer in progress) are retried for
        a while; the client retries anything after that.
        """
        waited = 0.0
        while True:
            self._require_leader()
            d = self.node.propose_conf_change(cc)  # refusals come back as a failed Deferred
            index = self.node.core.last_index  # the entry just appended, if it was accepted
            try:
                await d
                return index
            except ProposalDropped as exc:
                if waited >= PROPOSE_RETRY_SECONDS:
                    raise RequestError(ErrorCode.UNAVAILABLE, f"membership change refused: {exc}") from None
            await _sleep(self.reactor, POLL_SECONDS)
            waited += POLL_SECONDS

    # -- member list -------------------------------------------------------------

    def member_list(self, request: MemberListRequest, conn: Any = None) -> MemberListReply:
        """The leader's membership: voters and learners with their addresses."""
        self._require_leader()
        conf = self.node.core.conf
        known = self.directory.members()
        rows = []
        for node_id in sorted(conf.members()):
            member = known.get(node_id)
            rows.append(MemberInfo(
                node_id, VOTER if node_id in conf.voters else LEARNER,
                str(member.peer) if member is not None else "",
                str(member.client) if member is not None else ""))
        return MemberListReply(request.request_id, tuple(rows))

    # -- member add -----------------------------------------------------------------

    def _check_add(self, request: MemberAddRequest) -> None:
        if not NODE_ID_RE.fullmatch(request.node_id):
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"node id {request.node_id!r} is not 1-64 of [a-z0-9_-]")
        for what, text in (("--peer", request.peer), ("--client", request.client)):
            try:
                parse_address(text)
            except ValueError as exc:
                raise RequestError(ErrorCode.BAD_REQUEST, f"{what}: {exc}") from None
        conf_members = self.node.core.conf.members()
        for node_id, member in self.directory.members().items():
            if node_id not in conf_members:
                continue
            same = (str(member.peer) == request.peer, str(member.client) == request.client)
            if node_id == request.node_id:
                if not all(same):
                    raise RequestError(
                        ErrorCode.BAD_REQUEST,
                        f"{node_id} is already a member with peer {member.peer} and client "
                        f"{member.client}; remove it first to change its addresses")
            elif any(same):
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"{node_id} already listens at that address")

    async def member_add(self, request: MemberAddRequest, conn: Any) -> MemberChanged:
        self._require_leader()
        self._check_add(request)
        node_id = request.node_id
        role = self._role_of(node_id)
        index = self.node.core.commit_index
        if not role:
            context = CODEC.encode(MemberAddress(node_id, request.peer, request.client))
            index = await self._propose(ConfChange(ConfChangeType.ADD_LEARNER, node_id, context))
            log.info("{node} added {new} as a learner (entry {index})",
                     node=self.node_id, new=node_id, index=index)
            role = LEARNER
        if role == VOTER or request.learner_only:
            return MemberChanged(request.request_id, node_id, role, index)
        await self._wait_caught_up(request, conn)
        context = CODEC.encode(MemberAddress(node_id, request.peer, request.client))
        index = await self._propose(ConfChange(ConfChangeType.ADD_VOTER, node_id, context))
        log.info("{node} made {new} a voter (entry {index})", node=self.node_id, new=node_id,
                 index=index)
        return MemberChanged(request.request_id, node_id, VOTER, index)

    async def _wait_caught_up(self, request: MemberAddRequest, conn: Any) -> None:
        """Poll the learner's progress, reporting it, until it is close to our log's end."""
        node_id = request.node_id
        last_sent: tuple[int, int, str] | None = None
        last_time = float("-inf")
        while True:
            self._require_leader()
            if self._role_of(node_id) != LEARNER:
                raise RequestError(ErrorCode.NOT_FOUND,
                                   f"{node_id} stopped being a learner while catching up")
            if conn is not None and not getattr(conn, "open", True):
                raise RequestError(ErrorCode.UNAVAILABLE, "the client went away")
            view = self.node.core.progress().get(node_id)
            last = self.node.core.last_index
            if view is not None:
                caught_up = (view.state == "replicate"
                             and view.match + self.catch_up_slack >= last)
                now = self.reactor.seconds()
                state = (view.match, last, view.state)
                if conn is not None and (caught_up or now - last_time >= PROGRESS_EVERY
                                         or (last_sent is not None and view.match != last_sent[0])):
                    conn.send(MemberAddProgress(request.request_id, node_id, view.match, last,
                                                view.state))
                    last_sent, last_time = state, now
                if caught_up:
                    return
            await _sleep(self.reactor, POLL_SECONDS)

    # -- member remove ------------------------------------------------------------

    async def member_remove(self, request: MemberRemoveRequest, conn: Any) -> MemberChanged:
        self._require_leader()
        node_id = request.node_id
        conf = self.node.core.conf
        if node_id not in conf.members():
            raise RequestError(ErrorCode.NOT_FOUND, f"{node_id} is not a member")
        if conf.voters == frozenset({node_id}):
            raise RequestError(ErrorCode.BAD_REQUEST, f"{node_id} is the last voter")
        if node_id == self.node_id:
            await self._hand_over("")
            # The new leader removes us: the client follows this redirect.
            raise NotLeader(self.node.core.leader)
        member = self.directory.members().get(node_id)
        address = str(member.client) if member is not None else ""
        index = await self._propose(ConfChange(ConfChangeType.REMOVE, node_id))
        log.info("{node} removed {old} from the cluster (entry {index})",
                 node=self.node_id, old=node_id, index=index)
        if address:
            defer.Deferred.fromCoroutine(self._tell_removed(node_id, address, index))
        return MemberChanged(request.request_id, node_id, REMOVED, index)

    async def _tell_removed(self, node_id: str, address: str, index: int) -> None:
        """Best effort: the removed node may be down, and then it never hears it."""
        term = self.node.core.term
        for attempt in range(NOTICE_ATTEMPTS):
            conn = None
            try:
                conn = await self._connect(self.reactor, address, timeout=2.0, node=node_id)
                d = conn.request(lambda rid: RemovedNotice(rid, node_id, self.node_id, term, index))
                d.addTimeout(2.0, self.reactor)
                await d
                return
            except Exception as exc:
                if attempt == NOTICE_ATTEMPTS - 1:
                    log.warn("could not tell {old} at {address} that it was removed: {why}",
                             old=node_id, address=address, why=exc)
                    return
            finally:
                if conn is not None:
                    conn.close()
            await _sleep(self.reactor, 0.5)

    def removed_notice(self, notice: RemovedNotice, conn: Any = None) -> MemberChanged:
        """The leader says our removal committed: check it (module docstring), stop if it is true.

        The reply only acknowledges the notice; what the node does depends
        on what it finds, never on the notice alone.
        """
        core = self.node.core
        if notice.node_id != self.node_id:
            raise RequestError(ErrorCode.BAD_REQUEST, f"this node is {self.node_id}, not {notice.node_id}")
        if not core.conf.voters:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"{self.node_id} is waiting to join: it was never a member")
        if self.node_id in core.conf.members() and core.last_index >= notice.index:
            # We were added again after that removal (a replaced node): stale news.
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"{self.node_id} is a member again after entry {notice.index}")
        if not self.removed and not self._checking:
            self._checking = True
            d = defer.Deferred.fromCoroutine(self._check_removed(notice))
            d.addErrback(lambda f: log.failure("checking a removal notice failed", f))
        return MemberChanged(notice.request_id, self.node_id, REMOVED, notice.index)

    def _applied_without_us(self) -> bool:
        """Our own applied configuration (and the latest one in the log) no longer has us."""
        core = self.node.core
        try:
            applied = core.snapshot_meta_at(core.applied_index).conf
        except ValueError:
            return False
        return self.node_id not in applied.members() and self.node_id not in core.conf.members()

    async def _check_removed(self, notice: RemovedNotice) -> None:
        try:
            for attempt in range(CHECK_ATTEMPTS):
                if self.removed:
                    return
                if self._applied_without_us():
                    self._stop_removed(notice, "its own applied configuration")
                    return
                verdict = await self._ask_leader()
                if verdict is not None:
                    leader, members = verdict
                    if self.node_id in members:
                        log.warn("{node} ignored a removal notice naming {by} (entry {index}): the "
                                 "leader {leader} lists {node} as a member", node=self.node_id,
                                 by=notice.by, index=notice.index, leader=leader)
                    else:
                        self._stop_removed(notice, f"the member list of the leader {leader}")
                    return
                if attempt < CHECK_ATTEMPTS - 1:
                    await _sleep(self.reactor, CHECK_RETRY_SECONDS)
            log.warn("{node} could not confirm a removal notice naming {by} (entry {index}): no "
                     "leader answered; staying up", node=self.node_id, by=notice.by,
                     index=notice.index)
        finally:
            self._checking = False

    async def _ask_leader(self) -> tuple[str, frozenset[str]] | None:
        """The leader's membership, asked over our own connections to the members we know."""
        members = self.directory.members()
        leader = self.node.core.leader
        order = sorted(members, key=lambda nid: (nid != leader, nid))
        for node_id in order:
            if node_id == self.node_id:
                continue
            conn = None
            try:
                conn = await self._connect(self.reactor, str(members[node_id].client), timeout=2.0,
                                           node=node_id)
                d = conn.request(lambda rid: MemberListRequest(rid))
                d.addTimeout(2.0, self.reactor)
                reply = await d
            except Exception:
                continue  # down, not the leader, or slow: ask the next one
            finally:
                if conn is not None:
                    conn.close()
            if isinstance(reply, MemberListReply):
                return node_id, frozenset(row.id for row in reply.members)
        return None

    def _stop_removed(self, notice: RemovedNotice, evidence: str) -> None:
        if self.removed:
            return
        self.removed = True
        log.warn("{node} was removed from the cluster by {by} (entry {index}, term {term}, "
                 "confirmed by {evidence}); stopping", node=self.node_id, by=notice.by,
                 index=notice.index, term=notice.term, evidence=evidence)
        # Let the acknowledgement go out before the reactor stops.
        self.reactor.callLater(0.2, self._stop)

    # -- leader transfer --------------------------------------------------------------

    async def leader_transfer(self, request: LeaderTransferRequest, conn: Any) -> LeaderTransferDone:
        self._require_leader()
        target = request.target
        voters = self.node.core.conf.voters
        if target and target not in voters:
            raise RequestError(ErrorCode.NOT_FOUND, f"{target} is not a voter")
        if target == self.node_id:
            return LeaderTransferDone(request.request_id, self.node_id, self.node.core.term)
        if not voters - {self.node_id}:
            raise RequestError(ErrorCode.NOT_FOUND, "there is no other voter to hand over to")
        new_leader = await self._hand_over(target)
        return LeaderTransferDone(request.request_id, new_leader, self.node.core.term)

    async def _hand_over(self, target: str) -> str:
        """Transfer leadership (to the most up-to-date voter if ``target`` is empty)."""
        for _attempt in range(TRANSFER_ATTEMPTS):
            self._require_leader()
            await self._wait_holds_log(target)
            try:
                new_leader = await self.node.transfer_leadership(target, timeout=5.0)
            except NotLeader:
                raise
            except Timeout:
                continue
            if new_leader and (not target or new_leader == target):
                log.info("{node} handed leadership to {to}", node=self.node_id, to=new_leader)
                return new_leader
            if new_leader:
                raise NotLeader(new_leader)
            # Stepped down without seeing a successor yet: wait for one.
            for _ in range(int(5.0 / POLL_SECONDS)):
                if self.node.core.leader and self.node.core.leader != self.node_id:
                    return self.node.core.leader
                await _sleep(self.reactor, POLL_SECONDS)
            raise RequestError(ErrorCode.UNAVAILABLE, "stepped down, but no new leader appeared")
        raise RequestError(ErrorCode.UNAVAILABLE, f"leadership transfer to {target or 'a follower'} "
                                                  f"did not complete")

    async def _wait_holds_log(self, target: str, limit: float = 10.0) -> None:
        """Give a lagging target time to catch up; the core aborts a transfer after one timeout."""
        waited = 0.0
        while waited < limit:
            self._require_leader()
            progress = self.node.core.progress()
            last = self.node.core.last_index
            if target:
                views = [progress.get(target)]
            else:
                views = [v for p, v in progress.items()
                         if p != self.node_id and p in self.node.core.conf.voters]
            if any(v is not None and v.match >= last for v in views):
                return
            await _sleep(self.reactor, POLL_SECONDS)
            waited += POLL_SECONDS


__all__ = ["CATCH_UP_SLACK", "MembershipAdmin"]
