"""The gateway inside a node: its listener, its cluster client, the expiry of old uploads.

:func:`storg.daemon.makeService` adds a :class:`GatewayService` to the node's
service when the config has ``s3_listen``; it starts with the node (after
the state machine exists, whose key table authenticates requests) and
stops before it.

The gateway reaches the data as any client does, through
:class:`~storg.client.api.StorgClient`, starting at this node's own client
port (a read is served here after a ReadIndex round; a write goes on to
the leader) and knowing the other members' ports, with the node's own
certificate (a member node may read and write files).  Its connection to
its own node is made in memory (:mod:`storg.net.local_pipe`): the same
port and protocol, without a socket or a TLS layer that would encrypt
each reply only to decrypt it again in the same process.  With ``tls`` the
listener is HTTPS with the node's certificate, asking S3 clients for no
certificate of their own (they sign each request instead); without it,
plain HTTP, which the config allows only on loopback or with ``tls: off``.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from storg.client.api import StorgClient
from storg.config import NodeConfig
from storg.gateway import buckets, multipart, objects
from storg.gateway.handler import Gateway, Operation
from storg.gateway.multipart import expire_uploads
from storg.gateway.request import StreamingSite
from storg.net.connection import LocalDialer
from storg.net.tls import server_endpoint as tls_server_endpoint
from storg.raft.types import Role

log = Logger(namespace="storg.gateway")


def client_addresses(node: Any) -> list[str]:
    """This node's client address first, then every other member's."""
    config: NodeConfig = node.config
    members = node.directory.members()
    own = members.get(config.node_id)
    first = str(own.client) if own is not None else str(config.client_listen)
    return [first, *sorted(str(m.client) for nid, m in members.items() if nid != config.node_id)]


def all_operations() -> dict[str, tuple[str, Operation]]:
    """Every S3 operation the gateway serves, by S3's name."""
    return {**buckets.OPERATIONS, **objects.OPERATIONS, **multipart.OPERATIONS}


class GatewayService(service.Service):
    """``s3_listen`` of one node (see the module's docstring)."""

    def __init__(self, node: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.node = node
        self.reactor = reactor
        self.port: Any = None
        self.client: StorgClient | None = None
        self._expiry: task.LoopingCall | None = None

    def startService(self) -> None:
        node = self.node
        config: NodeConfig = node.config
        assert config.s3_listen is not None and node.fsm is not None
        addresses = client_addresses(node)
        # Its own node through memory (no loopback TLS hop), where its reads are served; writes go
        # on to the leader, over TLS if that is another node.
        dialer = LocalDialer(node.credentials, addresses[0], config.node_id, node.open_local_client)
        self.client = StorgClient(addresses, reactor=self.reactor, tls=node.credentials, dialer=dialer,
                                  read_home=addresses[0])
        self.gateway = Gateway(self.client, node.fsm.s3_secret, all_operations(), reactor=self.reactor,
                               catch_up=self._catch_up)
        site = StreamingSite(self.gateway.exchange)
        address = config.s3_listen
        endpoint: Any
        if node.credentials is not None:
            endpoint = tls_server_endpoint(self.reactor, address.host, address.port,
                                           node.credentials.https_server())
        else:
            cls = TCP6ServerEndpoint if ":" in address.host else TCP4ServerEndpoint
            endpoint = cls(self.reactor, address.port, interface=address.host)
        outcome: list[Any] = []
        endpoint.listen(site).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            outcome[0].raiseException()  # fail the node's start (port in use), as its other listeners do
        self.port = outcome[0] if outcome else None
        self._expiry = task.LoopingCall(self._expire)
        self._expiry.clock = self.reactor
        self._expiry.start(config.s3.expiry_interval_s, now=False)
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        if self.client is not None:
            self.client.close()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)
        return None

    async def _catch_up(self) -> None:
        raft = self.node.node
        if raft is not None:
            await raft.read_index(timeout=5.0)

    def is_leader(self) -> bool:
        raft = self.node.node
        return raft is not None and raft.core.role == Role.LEADER

    async def expire_now(self) -> int:
        """Remove the abandoned multipart uploads (the leader's gateway does it every interval)."""
        assert self.client is not None
        return await expire_uploads(self.client, time.time_ns(), self.node.config.s3.multipart_expiry_s)

    def _expire(self) -> defer.Deferred[None] | None:
        if not self.is_leader():
            return None

        def report(removed: int) -> None:
            if removed:
                log.info("removed {n} multipart uploads older than {age:.0f} s", n=removed,
                         age=self.node.config.s3.multipart_expiry_s)

        def failed(failure: Failure) -> None:
            log.warn("multipart expiry failed (tried again later): {why}", why=failure.getErrorMessage())

        return defer.Deferred.fromCoroutine(self.expire_now()).addCallbacks(report, failed)
