"""storg.net.tls over real TLS on loopback sockets: identities, mutual verification, refusals.

Every certificate here is made by storg.net.certs and every handshake is a
real OpenSSL one between a listener and a client in this reactor; nothing
of TLS is mocked.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from storg.net.certs import Issued, issue, make_ca, new_key, write_file
from storg.net.identity import identity_of_peercert
from storg.net.tls import (
    Identity,
    IdentityError,
    TLSConfigError,
    client_endpoint,
    client_options,
    describe_tls_failure,
    identity_of,
    parse_identity_uri,
    peer_identity,
    server_endpoint,
    server_options,
)

TIMEOUT = 10.0


async def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` on the reactor until it holds, or fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


# -- the material --------------------------------------------------------------------------------


class PKI:
    """Files of one cluster's CA, and of certificates good and bad, in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = make_ca()
        self.write("ca", self.ca)

    def path(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}-key.pem")

    def write(self, name: str, issued: Issued) -> None:
        write_file(self.path(name), issued.cert_pem(), 0o644, force=True)
        write_file(self.key(name), issued.key_pem(), 0o600, force=True)

    def write_cert(self, name: str, issued: Issued) -> str:
        write_file(self.path(name), issued.cert_pem(), 0o644, force=True)
        return self.path(name)

    def pair(self, name: str) -> tuple[str, str]:
        return self.path(name), self.key(name)


def signed(ca: Issued, *, common_name: str, uris: list[str], client: bool = True) -> Issued:
    """A CA-signed certificate with whatever subject and URIs a test wants (well-formed or not)."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    pki = PKI(tmp_path_factory.mktemp("pki"))
    for node_id in ("n1", "n2"):
        pki.write(node_id, issue(pki.ca, Identity.node(node_id)))
    pki.write("alice", issue(pki.ca, Identity.client("alice", "readwrite")))
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    pki.write("expired", issue(pki.ca, Identity.client("expired", "admin"), not_before=long_ago,
                               not_after=long_ago + datetime.timedelta(days=30)))
    pki.write("anonymous", signed(pki.ca, common_name="anonymous", uris=[]))
    other = make_ca()
    pki.write("other-ca", other)
    pki.write("mallory", issue(other, Identity.client("mallory", "admin")))
    pki.write("other-n1", issue(other, Identity.node("n1")))
    return pki


# -- identities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("identity", [Identity.node("n1"), Identity.node("a_b-9"),
                                      Identity.client("alice", "readonly"), Identity.client("bob.x", "readwrite"),
                                      Identity.client("admin", "admin"), Identity.node("n1", cluster="prod-1"),
                                      Identity.client("carol", "admin", cluster="prod.eu")])
def test_identity_round_trips_through_its_uri_and_a_certificate(pki, identity):
    assert parse_identity_uri(identity.uri()) == identity
    issued = issue(pki.ca, identity)
    assert identity_of(issued.cert) == identity
    # As the TLS connections read it: the standard library's decoding of the certificate.
    decoded = ssl._ssl._test_decode_cert(pki.write_cert(f"round-trip-{identity.name}", issued))
    assert identity_of_peercert(decoded) == identity


def test_the_uri_scheme_is_as_documented():
    assert Identity.node("n1").uri() == "storg://node/n1"
    assert Identity.client("alice", "readonly").uri() == "storg://client/alice?role=readonly"
    assert Identity.client("a", "admin", "c").uri() == "storg://client/a?role=admin&cluster=c"


@pytest.mark.parametrize("uri", [
    "storg://node/", "storg://node/N1", "storg://node/n1/x", "storg://node/n1?role=node",
    "storg://node/n1?cluster=", "storg://node/" + "a" * 65, "storg://client/alice",
    "storg://client/alice?role=root", "storg://client/alice?role=admin&role=admin",
    "storg://client/alice?role=admin&x=1", "storg://client/alice?role", "storg://client/.x?role=admin",
    "storg://client/alice?role=admin#f", "STORG://node/n1", "storg://node:1/n1", "storg://user@node/n1",
    "storg://thing/n1", "storg:node/n1", "storg://node/n1?", "storg://client/ali%63e?role=admin",
])
def test_malformed_identity_uris_are_refused(uri):
    with pytest.raises(IdentityError):
        parse_identity_uri(uri)


@pytest.mark.parametrize(("common_name", "uris", "message"), [
    ("n1", [], "no subjectAltName"),
    ("n1", ["https://example.com/"], "names no storg identity"),
    ("n1", ["storg://node/n1", "storg://node/n2"], "2 storg identities"),
    ("n1", ["storg://node/n1", "storg://node/n1"], "2 storg identities"),
    ("n2", ["storg://node/n1"], "common name"),
    ("n1", ["storg://node/n1?x=1"], "unknown parameter"),
])
def test_a_certificate_without_exactly_one_valid_identity_is_refused(pki, common_name, uris, message):
    with pytest.raises(IdentityError, match=message):
        identity_of(signed(pki.ca, common_name=common_name, uris=uris).cert)


def test_identity_values_are_checked():
    with pytest.raises(IdentityError):
        Identity("node", "n1", "admin")
    with pytest.raises(IdentityError):
        Identity("client", "alice", "node")
    with pytest.raises(IdentityError):
        Identity("robot", "r2", "node")


# -- loading the files ---------------------------------------------------------------------------


def test_loading_errors_are_one_line_naming_the_file(pki, tmp_path):
    ca, (cert, key) = pki.path("ca"), pki.pair("n1")
    missing = str(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ((missing, cert, key), missing),
        ((ca, missing, key), missing),
        ((ca, cert, missing), missing),
        ((str(garbage), cert, key), str(garbage)),
        ((ca, str(garbage), key), str(garbage)),
        ((ca, cert, str(garbage)), str(garbage)),
        ((ca, cert, pki.key("n2")), pki.key("n2")),            # the key of another certificate
        ((ca, *pki.pair("other-n1")), pki.path("other-n1")),  # not issued by this CA
        ((ca, *pki.pair("expired")), pki.path("expired")),    # expired
        ((ca, *pki.pair("anonymous")), pki.path("anonymous")),  # no identity
    ]
    for args, named in cases:
        with pytest.raises(TLSConfigError) as err:
            server_options(*args)
        message = str(err.value)
        assert message.startswith(named + ":") and "\n" not in message, message


def test_a_client_without_a_certificate_may_be_built_but_not_half_of_one(pki):
    client_options(pki.path("ca"), None, None)
    with pytest.raises(TLSConfigError):
        client_options(pki.path("ca"), pki.path("alice"), None)
    with pytest.raises(ValueError):
        client_options(pki.path("ca"), *pki.pair("alice"), expected_node="Not A Node")


# -- handshakes ----------------------------------------------------------------------------------


@implementer(IHandshakeListener)
class Side(Protocol):
    """One end of a connection: what it saw of the peer, and when; the server end echoes."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.identity_at_connect: Identity | None = None
        self.identity: Identity | None = None
        self.handshake_done = False
        self.received = b""
        self.lost: str | None = None

    def connectionMade(self) -> None:
        self.identity_at_connect = peer_identity(self.transport)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.identity = peer_identity(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.lost = describe_tls_failure(self.transport, reason)


class Server:
    def __init__(self, options, host: str = "127.0.0.1") -> None:
        self.options = options
        self.host = host
        self.sides: list[Side] = []
        self.port = None

    def build(self, addr) -> Side:
        side = Side(echo=True)
        self.sides.append(side)
        return side

    async def start(self) -> None:
        factory = Factory.forProtocol(lambda: None)
        factory.buildProtocol = self.build
        self.port = await server_endpoint(reactor, self.host, 0, self.options).listen(factory)
        self.port_number = self.port.getHost().port

    async def stop(self) -> None:
        for side in self.sides:
            if side.lost is None:
                side.transport.abortConnection()
        await wait_for(lambda: all(s.lost is not None for s in self.sides), "server connections to close")
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def harness():
    servers: list[Server] = []
    clients: list[Side] = []

    async def serve(options, host: str = "127.0.0.1") -> Server:
        server = Server(options, host)
        await server.start()
        servers.append(server)
        return server

    async def connect(server: Server, options) -> Side:
        side = Side(echo=False)
        endpoint = client_endpoint(reactor, server.host, server.port_number, options, timeout=TIMEOUT)
        await connectProtocol(endpoint, side)
        clients.append(side)
        side.transport.write(b"ping")
        await wait_for(lambda: side.received == b"ping" or side.lost is not None, "an echo or the end")
        return side

    yield serve, connect
    for side in clients:
        if side.lost is None:
            side.transport.abortConnection()
    await wait_for(lambda: all(s.lost is not None for s in clients), "client connections to close")
    for server in servers:
        await server.stop()


def good_client(pki, expected: str | None = "n1"):
    return client_options(pki.path("ca"), *pki.pair("alice"), expected_node=expected)


async def assert_served(server: Server, connect, pki) -> None:
    """A good client still gets through: its handshake completes and its bytes come back."""
    before = len(server.sides)
    side = await connect(server, good_client(pki))
    assert side.received == b"ping" and side.lost is None
    assert side.identity == Identity.node("n1")
    await wait_for(lambda: len(server.sides) > before and server.sides[-1].handshake_done, "the server handshake")
    assert server.sides[-1].identity == Identity.client("alice", "readwrite")


@pytest_twisted.ensureDeferred
async def test_mutual_handshake_both_ends_see_each_others_identity(pki, harness):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    side = await connect(server, good_client(pki))
    assert side.received == b"ping" and side.lost is None
    assert side.handshake_done and side.identity == Identity.node("n1")
    theirs = server.sides[0]
    assert theirs.handshake_done and theirs.identity == Identity.client("alice", "readwrite")
    # Before the handshake there is nothing to trust, and peer_identity says so.
    assert side.identity_at_connect is None and theirs.identity_at_connect is None
    assert side.transport.tls_version() == "TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_a_node_connecting_to_a_node_and_any_node_without_expectation(pki, harness):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    side = await connect(server, client_options(pki.path("ca"), *pki.pair("n2")))
    assert side.received == b"ping" and side.identity == Identity.node("n1")
    assert server.sides[0].identity == Identity.node("n2")


@pytest_twisted.ensureDeferred
async def test_ipv6(pki, harness):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")), host="::1")
    side = await connect(server, good_client(pki))
    assert side.received == b"ping" and side.identity == Identity.node("n1")


async def assert_refused_by_server(server: Server, side: Side, reason: str) -> None:
    """The server never finished a handshake with ``side`` nor gave it a byte; both ends are closed."""
    assert side.received == b"" and side.lost is not None
    await wait_for(lambda: server.sides and all(s.lost is not None for s in server.sides), "the server to close")
    refused = server.sides[-1]
    assert not refused.handshake_done and refused.received == b"" and refused.identity is None
    assert reason in refused.lost, refused.lost


@pytest_twisted.ensureDeferred
async def test_a_client_without_a_certificate_is_refused(pki, harness):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    side = await connect(server, client_options(pki.path("ca"), None, None, expected_node="n1"))
    await assert_refused_by_server(server, side, "did not return a certificate")
    assert "certificate required" in side.lost  # TLS 1.3: the server's alert, after the client's handshake
    await assert_served(server, connect, pki)


@pytest.mark.parametrize(("client", "reason"), [
    ("mallory", "not signed by this cluster's CA"),
    ("other-n1", "not signed by this cluster's CA"),
    ("expired", "it has expired"),
    ("anonymous", "names no storg identity"),
])
@pytest_twisted.ensureDeferred
async def test_a_client_certificate_the_ca_did_not_vouch_for_is_refused(pki, harness, client, reason):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    side = await connect(server, RawClient(pki.pair(client)))
    await assert_refused_by_server(server, side, reason)
    await assert_served(server, connect, pki)


class RawClient:
    """A hostile client: any certificate, trusting any server, accepting any identity (not storg's
    client's rules): OpenSSL's context with nothing checked."""

    server_side = False

    def __init__(self, pair: tuple[str, str], max_version: ssl.TLSVersion | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        if max_version is not None:
            self.context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            self.context.maximum_version = max_version
            self.context.set_ciphers("ALL:@SECLEVEL=0")
        self.context.load_cert_chain(*pair)

    def check_peer(self, identity):
        return None


@pytest_twisted.ensureDeferred
async def test_a_server_naming_another_node_is_refused_by_the_client(pki, harness):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n2")))
    side = await connect(server, good_client(pki, expected="n1"))
    assert side.received == b"" and not side.handshake_done and side.identity is None
    assert side.lost == "certificate of node n2 refused: expected node n1"
    # The client checks the server's identity once its side of the handshake is done, so the
    # server may have finished its own; it hears nothing and sees the connection end.
    await wait_for(lambda: server.sides and server.sides[-1].lost is not None, "the server to close")
    assert server.sides[-1].received == b""
    # The same server, with the right expectation, is fine.
    ok = await connect(server, good_client(pki, expected="n2"))
    assert ok.received == b"ping" and ok.identity == Identity.node("n2")


@pytest_twisted.ensureDeferred
async def test_a_server_from_another_ca_or_with_a_client_certificate_is_refused(pki, harness):
    serve, connect = harness
    foreign = await serve(server_options(pki.path("other-ca"), *pki.pair("other-n1")))
    side = await connect(foreign, good_client(pki))
    assert side.received == b"" and not side.handshake_done
    # The server sent its CA after its own certificate: the chain ends in a CA this client does not trust.
    assert side.lost == "certificate refused: it is not signed by this cluster's CA"
    # A client certificate is not a server's: its extended key usage says clientAuth only.
    posing = await serve(server_options(pki.path("ca"), *pki.pair("alice")))
    side = await connect(posing, good_client(pki, expected=None))
    assert side.received == b"" and not side.handshake_done
    assert side.lost == "certificate refused: its key usage does not allow this use"


def test_private_key_files_are_0600(pki):
    assert os.stat(pki.key("n1")).st_mode & 0o777 == 0o600


@pytest_twisted.ensureDeferred
async def test_tls_1_2_is_the_minimum(pki, harness):
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    side = await connect(server, RawClient(pki.pair("alice"), max_version=ssl.TLSVersion.TLSv1_2))
    assert side.received == b"ping"
    assert side.transport.tls_version() == "TLSv1.2"
    assert server.sides[-1].identity == Identity.client("alice", "readwrite")
    side = await connect(server, RawClient(pki.pair("alice"), max_version=ssl.TLSVersion.TLSv1_1))
    assert side.received == b"" and side.lost is not None and not server.sides[-1].handshake_done
    await assert_served(server, connect, pki)


@pytest_twisted.ensureDeferred
async def test_a_close_and_a_cut_are_told_apart(pki, harness):
    """The server's own close sends close_notify (a clean end); a TCP close under TLS, without
    close_notify, may have cut the stream short and is reported as a lost connection."""
    serve, connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    clean = await connect(server, good_client(pki))
    server.sides[-1].transport.loseConnection()
    await wait_for(lambda: clean.lost is not None, "the clean close")
    assert "without close_notify" not in clean.lost and "cleanly" in clean.lost, clean.lost
    cut = await connect(server, good_client(pki))
    server.sides[-1].transport.transport.loseConnection()  # TCP's FIN, under TLS
    await wait_for(lambda: cut.lost is not None, "the cut")
    assert "without close_notify" in cut.lost, cut.lost


@pytest_twisted.ensureDeferred
async def test_the_peers_close_notify_is_answered_while_tcp_stays_open(pki, harness, tmp_path):
    """A client that sends close_notify and waits for ours (as HTTPS clients may) gets it: the
    standard library's SSLObject reads the close_notify as b"", not as an exception."""
    from twisted.internet.threads import deferToThread

    serve, _connect = harness
    server = await serve(server_options(pki.path("ca"), *pki.pair("n1")))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.path("ca"))
    context.load_cert_chain(*pki.pair("alice"))

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port_number), timeout=TIMEOUT) as raw:
            tls = context.wrap_socket(raw)
            tls.sendall(b"hello")
            echoed = tls.recv(5)
            tls.unwrap()  # sends our close_notify and waits for the node's
            return echoed

    assert await deferToThread(client) == b"hello"
    await wait_for(lambda: server.sides and server.sides[-1].lost is not None, "the server's end")


@pytest_twisted.ensureDeferred
async def test_a_close_asked_before_the_handshake_gives_up_on_a_silent_peer(pki, monkeypatch):
    """Written-then-closed before the handshake: the bytes wait for it, but not for ever, when
    the other end accepted TCP and never answers TLS."""
    from twisted.internet.protocol import ServerFactory

    from storg.net import tls_stream

    monkeypatch.setattr(tls_stream, "CLOSE_GRACE", 0.3)
    silent = reactor.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        side = Side(echo=False)
        endpoint = client_endpoint(reactor, "127.0.0.1", silent.getHost().port, good_client(pki), timeout=TIMEOUT)
        await connectProtocol(endpoint, side)
        side.transport.write(b"hello")
        side.transport.loseConnection()
        await wait_for(lambda: side.lost is not None, "the close to give up", timeout=5)
        assert not side.handshake_done
    finally:
        await silent.stopListening()
