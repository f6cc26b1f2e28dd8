"""storgctl's blocking driver over TLS (the standard library's ssl): the checks the Twisted client makes.

A fake node serves mutual TLS with certificates made by ``storgctl certs
init`` (storg.net.certs); the blocking client runs in a thread while the
reactor serves.  It must present its certificate, accept only a node
certificate from its CA (the node it means to reach, when it names one),
and call every refusal a :class:`TLSRefusedError`, never a lost connection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from fake_node import FakeNode
from twisted.internet import threads

from storg.client.blocking import BlockingClient, BlockingTLS, TLSRefusedError, run_now
from storg.net.certs import add_client, init_dir
from storg.net.tls import server_options
from storg.net.tls_files import TLSConfigError


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("certs")
    init_dir(str(root / "ours"), ["n1", "n2"])
    init_dir(str(root / "theirs"), ["n1"])  # another cluster: another CA
    add_client(str(root / "ours"), "reader", "readonly")
    return root


def serving(certs: Path, node: str, folder: str = "ours") -> FakeNode:
    d = certs / folder
    return FakeNode(tls=server_options(str(d / "ca.pem"), str(d / f"{node}.pem"), str(d / f"{node}-key.pem")))


def client_tls(certs: Path, name: str = "admin") -> BlockingTLS:
    d = certs / "ours"
    return BlockingTLS(str(d / "ca.pem"), str(d / f"{name}.pem"), str(d / f"{name}-key.pem"))


def in_thread(f, *args):
    return threads.deferToThread(f, *args)


@pytest_twisted.ensureDeferred
async def test_a_node_of_our_ca_serves_and_sees_our_certificate(certs):
    node = serving(certs, "n1")
    try:
        node.add_file("/f", b"over tls")
        client = BlockingClient([node.address], timeout=5, tls=client_tls(certs))
        info = await in_thread(run_now, client.stat("/f"))
        assert info.size == 8
        client.close()
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_node_certificate_from_another_ca_is_refused_at_once(certs):
    node = serving(certs, "n1", folder="theirs")
    try:
        client = BlockingClient([node.address], timeout=20, tls=client_tls(certs))
        with pytest.raises(TLSRefusedError, match="certificate refused: .*(CA|issuer)"):
            await in_thread(run_now, client.ls("/"))
        client.close()
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_a_node_that_is_not_the_one_meant_is_refused(certs):
    node = serving(certs, "n2")
    try:
        client = BlockingClient([node.address], timeout=5, tls=client_tls(certs))
        with pytest.raises(TLSRefusedError, match="certificate of node n2 refused: expected node n1"):
            await in_thread(client.connection, node.address, 5.0, "n1")
        conn = await in_thread(client.connection, node.address, 5.0, "n2")
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.close()
    finally:
        await node.close()


@pytest_twisted.ensureDeferred
async def test_without_a_certificate_every_node_refuses_us_and_it_is_said_at_once(certs):
    node = serving(certs, "n1")
    try:
        d = certs / "ours"
        client = BlockingClient([node.address], timeout=20, tls=BlockingTLS(str(d / "ca.pem"), None, None))
        with pytest.raises(TLSRefusedError, match="certificate required|handshake failure"):
            await in_thread(run_now, client.ls("/"))
        client.close()
    finally:
        await node.close()


def test_unusable_material_is_a_config_error_naming_the_file(certs, tmp_path):
    d = certs / "ours"
    with pytest.raises(TLSConfigError, match="missing.pem"):
        BlockingTLS(str(tmp_path / "missing.pem"), None, None)
    # A key that is not the certificate's.
    with pytest.raises(TLSConfigError, match="does not match"):
        BlockingTLS(str(d / "ca.pem"), str(d / "admin.pem"), str(d / "reader-key.pem"))
    # A node's CA file given as a certificate with no storg identity.
    with pytest.raises(TLSConfigError, match="storg identity"):
        BlockingTLS(str(d / "ca.pem"), str(d / "ca.pem"), str(d / "ca-key.pem"))
    assert os.path.exists(d / "admin.pem")
