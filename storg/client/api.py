"""The client library's entry point: a cluster, not a single node.

:class:`StorgClient` knows a list of client addresses, keeps one connection
per node it has talked to, and spreads questions such as ``status`` over
every member.  Waiting for a leader or a quorum is bounded by ``timeout``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from storg.client.connection import ClientConnection, ServerError, connect
from storg.wire import ErrorCode, ProbeRead, ProbeWrite, StatusReply, StatusRequest

STATUS_KEYS = ("id", "role", "term", "leader", "commit_index", "applied_index", "last_index")


class ClusterUnavailable(Exception):
    """No node answered (or no leader / quorum) within the timeout."""


class StorgClient:
    def __init__(self, addresses: list[str], *, reactor: Any = None, timeout: float = 30.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        if not addresses:
            raise ValueError("no cluster address given")
        self.addresses = list(addresses)
        self.reactor = reactor
        self.timeout = timeout
        self._connections: dict[str, ClientConnection] = {}
        self._leader_guess = self.addresses[0]

    async def connection(self, address: str, timeout: float | None = None) -> ClientConnection:
        conn = self._connections.get(address)
        if conn is not None and conn.connected:
            return conn
        conn = await connect(self.reactor, address, timeout=min(self.timeout, timeout or 5.0))
        self._connections[address] = conn
        return conn

    def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    async def call_leader(self, make: Any, timeout: float | None = None) -> Any:
        """Send ``make(request_id)`` to the leader, following redirects, until ``timeout``.

        NOT_LEADER answers name the leader's client address when the node
        knows it; otherwise, and on connection failures, the next address
        is tried, with a short pause once every address has been tried.
        Raises ClusterUnavailable when the deadline passes, and ServerError
        for any other refusal.
        """
        deadline = self.reactor.seconds() + (self.timeout if timeout is None else timeout)
        candidates = list(self.addresses)
        target = self._leader_guess
        failures = 0
        last_error: str = "no answer"
        while True:
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                raise ClusterUnavailable(f"no leader answered within the timeout ({last_error})")
            try:
                conn = await self.connection(target, timeout=min(remaining, 5.0))
                d = conn.request(make)
                d.addTimeout(remaining, self.reactor)
                reply = await d
                self._leader_guess = target
                return reply
            except ServerError as exc:
                if exc.code not in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE):
                    raise
                last_error = str(exc)
                if exc.code == ErrorCode.NOT_LEADER and exc.leader and exc.leader != target:
                    target = exc.leader
                    continue
            except defer.TimeoutError:
                last_error = f"{target} did not answer in time"
            except Exception as exc:  # connection refused, lost, reset
                last_error = f"{target}: {exc}"
                self._connections.pop(target, None)
            failures += 1
            target = candidates[failures % len(candidates)]
            if failures % len(candidates) == 0:
                await _pause(self.reactor, min(0.05 * (failures // len(candidates)), 0.5))

    async def probe_write(self, payload: bytes = b"", timeout: float | None = None) -> int:
        """Commit a write that changes nothing; returns its log index."""
        reply = await self.call_leader(lambda rid: ProbeWrite(rid, payload), timeout)
        return reply.index

    async def probe_read(self, timeout: float | None = None) -> int:
        """Confirm a linearizable read point on the leader; returns its index."""
        reply = await self.call_leader(ProbeRead, timeout)
        return reply.index

    async def _ask_status(self, address: str, timeout: float) -> StatusReply:
        conn = await self.connection(address, timeout)
        d = conn.request(StatusRequest)
        d.addTimeout(timeout, self.reactor)
        return await d

    async def status(self) -> list[dict[str, Any]]:
        """One row per member, as each member reports itself; ``unreachable`` where none came.

        The member list comes from the first node that answers; each member
        is then asked directly, all at once, so one dead node costs one
        timeout, not one per row.
        """
        per_node = min(self.timeout, 3.0)
        first: StatusReply | None = None
        for address in self.addresses:
            try:
                first = await self._ask_status(address, per_node)
                break
            except Exception:
                continue
        if first is None:
            raise ClusterUnavailable("no node answered at " + ", ".join(self.addresses))
        members = sorted(first.members, key=lambda m: m.id) or []

        async def row_of(member) -> dict[str, Any]:
            if member.id == first.row.id:
                return _row_dict(first)
            try:
                return _row_dict(await self._ask_status(member.client, per_node))
            except Exception:
                return {"id": member.id, "role": "unreachable", "term": None, "leader": None,
                        "commit_index": None, "applied_index": None, "last_index": None}

        if not members:
            return [_row_dict(first)]
        rows = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(row_of(m)) for m in members], consumeErrors=True)
        return list(rows)


def _pause(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)


def _row_dict(reply: StatusReply) -> dict[str, Any]:
    row = reply.row
    return {key: getattr(row, key) for key in STATUS_KEYS}
