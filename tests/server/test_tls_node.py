"""A node with a ``tls`` section, in this process: real TLS on its client port, roles enforced.

Issue 15: who may send what.  A single-node cluster (it elects itself at
once) listens on loopback with the certificates ``storgctl certs init`` and
``certs client`` make; each test connects over real TLS with one
certificate and checks what it may do.  The refusals must change nothing:
after a forged RemovedNotice or a snapshot from a ``readwrite`` client the
node still serves, with its state untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from storg.config import load_config
from storg.net.certs import add_client, init_dir
from storg.net.connection import connect
from storg.net.credentials import TLSCredentials
from storg.net.errors import LimitExceeded, NotFoundError, PermissionDenied
from storg.server import permissions
from storg.server.service import NodeService
from storg.testing.devcluster import free_port
from storg.testing.tls_material import attempt, strangers
from storg.wire import ErrorCode, ErrorReply, ProbeRead, ProbeWrite, StatusReply, StatusRequest
from storg.wire.admin import (
    LeaderTransferRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberRemoveRequest,
    RemovedNotice,
)
from storg.wire.chunks import ChunkGet, ChunkPutAfter
from storg.wire.files import RmRequest, ScrubStatusRequest
from storg.wire.objects import S3KeyListRequest
from storg.wire.snapshots import SnapshotBegin


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path):
    service = start_node(tmp_path)
    try:
        yield service
    finally:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def small_node(tmp_path: Path):
    """A node that takes at most two client connections at once."""
    service = start_node(tmp_path, limits={"max_client_connections": 2})
    try:
        yield service
    finally:
        await service.stopService()


def start_node(tmp_path: Path, **extra) -> NodeService:
    certs = tmp_path / "certs"
    init_dir(str(certs), ["n1"])
    for name, role in (("reader", "readonly"), ("writer", "readwrite")):
        add_client(str(certs), name, role)
    peer, client = free_port(), free_port()
    config = tmp_path / "n1.yaml"
    config.write_text(yaml.safe_dump({
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{peer}",
        "client_listen": f"127.0.0.1:{client}",
        "cluster": {"n1": {"peer": f"127.0.0.1:{peer}", "client": f"127.0.0.1:{client}"}},
        "tls": {"ca": "certs/ca.pem", "cert": "certs/n1.pem", "key": "certs/n1-key.pem"},
        **extra,
    }))
    service = NodeService(load_config(config), reactor)
    service.startService()
    service.tmp = tmp_path
    service.certs = certs
    service.address = f"127.0.0.1:{client}"
    return service


async def as_(service: NodeService, name: str):
    certs = service.certs
    creds = TLSCredentials(certs / "ca.pem", certs / f"{name}.pem", certs / f"{name}-key.pem")
    return await connect(reactor, service.address, timeout=10, tls=creds.client())


async def wait_leader(service: NodeService) -> None:
    for _ in range(200):
        if service.node is not None and service.node.is_leader():
            return
        from twisted.internet.task import deferLater
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("the single node did not elect itself")


@pytest_twisted.ensureDeferred
async def test_the_running_node_serves_nothing_the_table_does_not_list(node) -> None:
    handled = set(node.client_handlers())
    missing = {cls.__name__ for cls in handled if cls not in permissions.REQUIRED}
    assert not missing, f"handlers without a permission: {sorted(missing)}"


@pytest_twisted.ensureDeferred
async def test_readonly_reads_and_is_refused_writes(node) -> None:
    await wait_leader(node)
    conn = await as_(node, "reader")
    try:
        reply = await conn.request(lambda rid: StatusRequest(rid))
        assert isinstance(reply, StatusReply) and reply.row.id == "n1"
        await conn.request(lambda rid: ProbeRead(rid))
        for make in (lambda rid: ProbeWrite(rid, b"x"), lambda rid: RmRequest(rid, "/a", 1, 1)):
            with pytest.raises(PermissionDenied, match="needs the write permission"):
                await conn.request(make)
        # The connection is still usable after a refusal.
        reply = await conn.request(lambda rid: StatusRequest(rid))
        assert isinstance(reply, StatusReply)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_readwrite_writes_but_sends_no_admin_or_node_only_message(node) -> None:
    await wait_leader(node)
    conn = await as_(node, "writer")
    try:
        index = (await conn.request(lambda rid: ProbeWrite(rid, b"w"))).index
        assert index > 0
        term = node.node.core.term
        last = node.node.core.last_index
        forged = {
            "MemberAddRequest": lambda rid: MemberAddRequest(rid, "n9", "127.0.0.1:1", "127.0.0.1:2", False),
            "MemberRemoveRequest": lambda rid: MemberRemoveRequest(rid, "n1"),
            "LeaderTransferRequest": lambda rid: LeaderTransferRequest(rid, ""),
            "ScrubStatusRequest(start)": lambda rid: ScrubStatusRequest(rid, True),
            "RemovedNotice": lambda rid: RemovedNotice(rid, "n1", "n2", term + 1, last + 100),
            "SnapshotBegin": lambda rid: SnapshotBegin(rid, "n1", term, last + 10, term, ("n1",), (),
                                                       10, hashlib.sha256(b"0" * 10).hexdigest()),
            "ChunkGet": lambda rid: ChunkGet(rid, "0" * 64),
            "ChunkPutAfter": lambda rid: ChunkPutAfter(rid, hashlib.sha256(b"x").hexdigest(), 1, b"x"),
        }
        for what, make in forged.items():
            with pytest.raises(PermissionDenied) as info:
                await conn.request(make)
            assert "permission" in str(info.value) or "only by the cluster's nodes" in str(info.value), what
        # Nothing reached the node: it still leads, serves, and was not told it was removed.
        assert node.node.is_leader() and node.node.core.term == term
        assert node.node.core.conf.voters == frozenset({"n1"})
        assert not node.admin.removed
        assert (await conn.request(lambda rid: ProbeWrite(rid, b"again"))).index > index
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_member_node_certificate_reads_and_writes_files_but_does_not_administer(node) -> None:
    # The S3 gateway in each node acts with the node's own certificate (issue 18).
    await wait_leader(node)
    conn = await as_(node, "n1")
    try:
        assert (await conn.request(lambda rid: ProbeWrite(rid, b"gateway"))).index > 0
        with pytest.raises(NotFoundError):  # allowed: the handler itself answers
            await conn.request(lambda rid: RmRequest(rid, "/no/such", 7, 1))
        for make in (lambda rid: LeaderTransferRequest(rid, ""), lambda rid: S3KeyListRequest(rid),
                     lambda rid: MemberRemoveRequest(rid, "n1")):
            with pytest.raises(PermissionDenied, match="needs the admin permission"):
                await conn.request(make)
        assert node.node.is_leader()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_admin_may_administer(node) -> None:
    await wait_leader(node)
    conn = await as_(node, "admin")
    try:
        reply = await conn.request(lambda rid: MemberListRequest(rid))
        assert [m.id for m in reply.members] == ["n1"]
        await conn.request(lambda rid: ScrubStatusRequest(rid, True))
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_strangers_are_refused_in_the_handshake_or_by_role(node) -> None:
    await wait_leader(node)
    host, port = node.address.rsplit(":", 1)
    for name, triple in strangers(node.certs, node.tmp / "strangers").items():
        outcome, detail = await deferToThread(attempt, host, int(port), triple, ProbeRead(1))
        if name == "a node that is not a member":
            # Its certificate is the cluster CA's, so the handshake passes; the role check refuses
            # everything but the questions a removed node asks (status, member list).
            assert outcome == "answered" and isinstance(detail, ErrorReply), (name, detail)
            assert detail.code == ErrorCode.PERMISSION_DENIED and "not a member" in detail.message
            outcome, detail = await deferToThread(attempt, host, int(port), triple, StatusRequest(1))
            assert outcome == "answered" and isinstance(detail, StatusReply), (name, detail)
        else:
            assert outcome == "refused", (name, detail)
    # And a proper client still gets in.
    outcome, detail = await deferToThread(
        attempt, host, int(port), (str(node.certs / "ca.pem"), str(node.certs / "reader.pem"),
                                   str(node.certs / "reader-key.pem")), StatusRequest(1))
    assert outcome == "answered" and isinstance(detail, StatusReply)


@pytest_twisted.ensureDeferred
async def test_a_plain_tcp_client_gets_nothing_from_a_tls_port(node) -> None:
    await wait_leader(node)
    conn = await connect(reactor, node.address, timeout=10)  # no TLS
    try:
        with pytest.raises(Exception) as info:
            d = conn.request(lambda rid: StatusRequest(rid))
            d.addTimeout(10, reactor)
            await d
        assert not isinstance(info.value, StatusReply)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_tls_client_connection_really_closes(node) -> None:
    """RequestConnection.close over TLS ends the connection on both sides.

    Over TLS ``transport.producer`` is the TLS layer's, not the connection's
    write gate; a close that unregistered the gate only when it saw it there
    never unregistered it, the TLS layer waited for the producer forever, and
    every connection a client or a node closed stayed open on the node until
    the connection limit refused everyone.
    """
    await wait_leader(node)
    factory_connections = None
    for _ in range(3):
        conn = await as_(node, "admin")
        await conn.request(lambda rid: StatusRequest(rid))
        conn.close()
        closed = conn.closed
        closed.addTimeout(5, reactor)
        await closed
    for _ in range(100):
        ports = [s for s in node.services if hasattr(getattr(s, "factory", None), "connections")]
        factory_connections = [len(s.factory.connections) for s in ports]
        if factory_connections and max(factory_connections) == 0:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"the node still counts open client connections: {factory_connections}")


@pytest_twisted.ensureDeferred
async def test_over_tls_a_connection_past_the_limit_reads_why(small_node) -> None:
    """The refusal (one ErrorReply) crosses TLS: a TCP half-close would cut the handshake short."""
    await wait_leader(small_node)
    held = [await as_(small_node, "admin") for _ in range(2)]
    try:
        for conn in held:
            await conn.request(lambda rid: StatusRequest(rid))
        extra = await as_(small_node, "admin")
        with pytest.raises(LimitExceeded, match="max_client_connections"):
            d = extra.request(lambda rid: StatusRequest(rid))
            d.addTimeout(10, reactor)
            await d
        extra.close()
    finally:
        for conn in held:
            conn.close()
