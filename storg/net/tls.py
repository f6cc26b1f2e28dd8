"""Mutual TLS for storg's ports: who a certificate names, and the TLS contexts that check it.

This module knows certificates, TLS contexts and Twisted endpoints; it knows
nothing of nodes, requests or roles beyond their names, so the node's
listeners, the peer transport and storgctl all build on it.

The identity scheme
-------------------

Every storg certificate names exactly one *identity*, signed by the
cluster's CA (``storgctl certs init`` makes one CA per cluster; the CA is
the trust boundary, so a node trusts exactly the certificates its ``tls.ca``
signed):

* the Subject's common name (CN) is the identity's name: the node id, or
  the user name;
* one subjectAltName URI carries the identity itself:

  - ``storg://node/<node id>`` for a node (its role is ``node``);
  - ``storg://client/<user name>?role=<role>`` for a client, ``<role>`` one
    of ``readonly``, ``readwrite``, ``admin``.

  An optional ``cluster=<token>`` parameter (``?cluster=...`` for a node,
  ``&cluster=...`` after the role) names a cluster, for a CA shared by
  several clusters; it is parsed into :attr:`Identity.cluster`, and
  ``storgctl certs`` does not write it (one CA per cluster makes it
  unnecessary).

Parsing is strict (:func:`identity_of`): the certificate must carry exactly
one ``storg:`` URI, written exactly as above (lower case, no port, user
info, fragment, unknown or repeated parameter), its name must be valid
(node ids: 1-64 of ``[a-z0-9_-]``, :data:`storg.config.NODE_ID_RE`; user
names: 1-64 of ``[a-z0-9_.-]`` starting with a letter or digit), and the CN
must be present once and equal that name.  Anything else is refused with
:class:`IdentityError`.  DNS and IP subjectAltNames may sit beside the URI
(node certificates carry them for HTTPS clients that check host names);
storg itself never looks at them, because nodes are addressed by IP and
named by id: a client that dials a node checks the node id in the
certificate (``expected_node``), not the address it dialled.

Node certificates have both the serverAuth and the clientAuth extended key
usage (a node accepts connections and makes them to its peers); client
certificates only clientAuth, so OpenSSL itself refuses a client
certificate presented by a server.

The contexts
------------

:func:`server_options` and :func:`client_options` return a side's TLS
configuration: one ``ssl.SSLContext`` (the standard library's), TLS 1.2 at
least (1.3 is preferred: OpenSSL negotiates the highest both ends have),
ECDHE with AES-GCM or ChaCha20 for 1.2, no session tickets, no
renegotiation, no compression.  A server requires a client certificate
signed by the CA and naming a valid storg identity; a client requires the
server's certificate to be signed by the CA and to name a node (the node
``expected_node``, when given).  OpenSSL verifies the chain in the
handshake and sends the peer an alert when it fails; the identity is
checked as soon as the handshake is done (``check_peer``), before the
protocol hears of the connection.  Either refusal is kept, in one line,
for :func:`describe_tls_failure`.  Connections run on
:mod:`storg.net.tls_stream`, not on Twisted's ``TLSMemoryBIOProtocol``,
for 0.38 of its own CPU cost per message (its docstring has the figures).

When is the peer's identity known?
----------------------------------

Twisted calls the protocol's ``connectionMade`` as soon as TCP connects,
*before* the TLS handshake: at that point :func:`peer_identity` is
``None`` and nothing may be trusted.  The end of the handshake is signalled
to a protocol that provides
``twisted.internet.interfaces.IHandshakeListener`` by a call to its
``handshakeCompleted()``, as Twisted's own TLS does.  From then on
:func:`peer_identity` returns the verified identity.  So a protocol that
needs to know who is on the other end is declared
``@implementer(IHandshakeListener)`` and reads ``peer_identity(self.transport)``
in ``handshakeCompleted`` (buffering or refusing any bytes before it).

One asymmetry of TLS 1.3: the client finishes its handshake before the
server has checked the client's certificate.  A client whose certificate
the server refuses sees ``handshakeCompleted`` and then the connection
ending, with the server's alert when the chain failed
(``describe_tls_failure`` names it) or with a close when the identity was
refused.  The server never calls ``handshakeCompleted`` for a refused
client, and never delivers it a byte.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints
from twisted.python.failure import Failure

from storg.names import NODE_ID_RE
from storg.net.identity import (
    CLIENT,
    CLIENT_ROLES,
    CLUSTER_RE,
    NODE,
    NODE_ROLE,
    URI_SCHEME,
    USER_NAME_RE,
    Identity,
    IdentityError,
    identity_from_names,
    parse_identity_uri,
)
from storg.net.tls_files import TLSConfigError
from storg.net.tls_policy import base_context
from storg.net.tls_stream import TLSStream, TLSStreamFactory, tls_error_text

__all__ = [
    "CLIENT", "CLIENT_ROLES", "CLUSTER_RE", "NODE", "NODE_ROLE", "URI_SCHEME", "USER_NAME_RE",
    "ClientTLS", "Identity", "IdentityError", "ServerTLS", "TLSConfigError", "client_options",
    "describe_tls_failure", "identity_of", "load_certificates", "load_private_key", "parse_identity_uri",
    "is_tls_failure", "peer_identity", "server_endpoint", "client_endpoint",
]



def identity_of(cert: x509.Certificate) -> Identity:
    """The storg identity a certificate names.

    :class:`IdentityError` unless it names exactly one, well-formed, with a
    matching common name (see the module docstring).  This reads the
    certificate only: whether the CA signed it is the TLS context's job.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris: list[str] | None = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = None
    except ValueError as exc:  # a malformed extension
        raise IdentityError(f"certificate has an unreadable extension: {exc}") from None
    names = [n.value if isinstance(n.value, str) else n.value.decode("utf-8", "replace")
             for n in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return identity_from_names(uris, names)


# -- loading the files -------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def load_certificates(path: str, what: str = "certificate") -> list[x509.Certificate]:
    """Every PEM certificate in a file (at least one), or :class:`TLSConfigError` naming it."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{path}: not a PEM {what}") from None
    if not certs:
        raise TLSConfigError(f"{path}: not a PEM {what}")
    return certs


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def load_private_key(path: str) -> PrivateKey:
    """An unencrypted PEM private key, or :class:`TLSConfigError` naming the file."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"{path}: the private key is encrypted; storg needs it unencrypted (mode 0600)") \
            from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise TLSConfigError(f"{path}: unsupported private key type {type(key).__name__}")
    return key


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_own_certificate(cert: x509.Certificate, cert_path: str, cas: Sequence[x509.Certificate],
                           ca_path: str) -> Identity:
    """Our own certificate names an identity, is in its validity period and was issued by the CA."""
    try:
        identity = identity_of(cert)
    except IdentityError as exc:
        raise TLSConfigError(f"{cert_path}: {exc}") from None
    now = _now()
    if cert.not_valid_after_utc < now:
        raise TLSConfigError(f"{cert_path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise TLSConfigError(f"{cert_path}: the certificate is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return identity
        except (InvalidSignature, ValueError, TypeError):  # signed by another key, or of another type
            continue
    raise TLSConfigError(f"{cert_path}: the certificate was not issued by the CA in {ca_path}")


class _Options:
    """One TLS context (the standard library's), built once from the files; a session per connection.

    The context is the standard library's ``ssl.SSLContext``, not a
    pyOpenSSL one: connections run on :mod:`storg.net.tls_stream`, which
    drives OpenSSL's memory BIOs from C (see its docstring for why).  The
    files are still read and checked with ``cryptography`` first, so a bad
    file is one :class:`TLSConfigError` line naming it.
    """

    server_side = False

    def __init__(self, ca_path: str, cert_path: str | None, key_path: str | None, *, server: bool,
                 verify_peer: bool = True) -> None:
        cas = load_certificates(ca_path, "CA certificate")
        self.identity: Identity | None = None
        self.server_side = server
        ctx = base_context(server=server)
        if (cert_path is None) != (key_path is None):
            raise TLSConfigError("a certificate and its key go together: give both or neither")
        if cert_path is not None and key_path is not None:
            chain = load_certificates(cert_path)
            load_private_key(key_path)  # a clear error for a missing, encrypted or foreign key
            self.identity = _check_own_certificate(chain[0], cert_path, cas, ca_path)
            try:
                ctx.load_cert_chain(cert_path, key_path)
            except (ssl.SSLError, OSError, ValueError):
                raise TLSConfigError(f"{key_path}: the key does not match the certificate in {cert_path}") \
                    from None
        elif server:
            raise TLSConfigError("a TLS server needs its certificate and key")
        try:
            ctx.load_verify_locations(ca_path)
        except (ssl.SSLError, OSError, ValueError):
            raise TLSConfigError(f"{ca_path}: OpenSSL cannot use this CA certificate") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_peer else ssl.CERT_NONE
        self.context = ctx

    def check_peer(self, identity: Identity | None) -> str | None:
        """Why the verified peer ``identity`` is refused, or None to accept it (see TLSStream)."""
        return None


class ServerTLS(_Options):
    """A server's TLS: its certificate, and a client certificate from the CA required of every peer.

    ``require_client_certificate=False`` is for the S3 port only: S3 clients
    (boto3, rclone, ...) show no certificate, and every S3 request is
    authenticated by its own signature (AWS Signature V4) instead.
    """

    def __init__(self, ca_path: str, cert_path: str, key_path: str, *,
                 require_client_certificate: bool = True) -> None:
        super().__init__(ca_path, cert_path, key_path, server=True, verify_peer=require_client_certificate)


class ClientTLS(_Options):
    """A client's TLS: the server must be a node of the CA (``expected_node``, if given)."""

    def __init__(self, ca_path: str, cert_path: str | None, key_path: str | None,
                 expected_node: str | None = None) -> None:
        if expected_node is not None and not NODE_ID_RE.fullmatch(expected_node):
            raise ValueError(f"invalid node id {expected_node!r}")
        self.expected_node = expected_node
        super().__init__(ca_path, cert_path, key_path, server=False)

    def check_peer(self, identity: Identity | None) -> str | None:
        if identity is None:
            return "the server showed no certificate"
        if identity.kind != NODE:
            return "the server is not a node"
        if self.expected_node is not None and identity.name != self.expected_node:
            return f"expected node {self.expected_node}"
        return None


def server_options(ca_path: str, cert_path: str, key_path: str) -> ServerTLS:
    """TLS for a listener: mutual, the client's certificate signed by the CA in ``ca_path``.

    The files are read and checked now (:class:`TLSConfigError`, one line
    naming the file): the certificate must name a storg identity, be valid
    today, be issued by the CA and match the key.
    """
    return ServerTLS(ca_path, cert_path, key_path)


def client_options(ca_path: str, cert_path: str | None, key_path: str | None,
                   expected_node: str | None = None) -> ClientTLS:
    """TLS for a connection to a node: its certificate must be the CA's and name a node.

    ``expected_node``: the node id the server's certificate must name (the
    address dialled is not checked).  ``cert_path`` and ``key_path`` may both
    be None: a client without a certificate, which every storg server refuses.
    """
    return ClientTLS(ca_path, cert_path, key_path, expected_node)


def peer_identity(transport: Any) -> Identity | None:
    """The verified identity of the other end of a TLS ``transport``, once the handshake is done.

    None before the handshake has completed (e.g. in ``connectionMade``; see
    the module docstring for ``IHandshakeListener``), if the peer showed no
    certificate (the S3 port), or if the transport is not TLS.  The
    certificate was verified against the CA and its identity checked during
    the handshake (:class:`storg.net.tls_stream.TLSStream`).
    """
    if not isinstance(transport, TLSStream):
        return None
    return transport.tls_identity


def is_tls_failure(reason: object) -> bool:
    """Whether a connection ended because of TLS (a refused certificate, an alert), not TCP."""
    error = reason.value if isinstance(reason, Failure) else reason
    return isinstance(error, ssl.SSLError)


def describe_tls_failure(transport: Any, reason: Failure | BaseException | None = None) -> str:
    """One line saying why a TLS connection ended: our refusal of the peer, or OpenSSL's error.

    Call it from ``connectionLost(reason)`` with the protocol's transport:
    a certificate this end refused is described by name and cause
    ("certificate of node n2 refused: expected node n1"); otherwise the
    OpenSSL error (for instance the alert the peer sent: "tlsv13 alert
    certificate required").
    """
    refusal = transport.refusal if isinstance(transport, TLSStream) else None
    if refusal is not None:
        return refusal
    if reason is None:
        return "connection closed"
    error = reason.value if isinstance(reason, Failure) else reason
    if error is None:
        return "connection closed"
    if isinstance(error, ssl.SSLError):
        return tls_error_text(error)
    return " ".join(str(error).split()) or type(error).__name__


# -- endpoints ---------------------------------------------------------------------------------


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _TLSServerEndpoint:
    """A TCP listener whose every connection runs TLS (:class:`TLSStream`) under the protocol."""

    def __init__(self, tcp: Any, options: ServerTLS, reactor: Any) -> None:
        self._tcp = tcp
        self._options = options
        self._reactor = reactor

    def listen(self, factory: Any) -> Any:
        return self._tcp.listen(TLSStreamFactory(self._options, factory, self._reactor))


class _TLSClientEndpoint:
    """A TCP connection with TLS under the protocol; fires with the caller's protocol, as
    ``wrapClientTLS`` does (the handshake is still to come: ``handshakeCompleted``)."""

    def __init__(self, tcp: Any, options: ClientTLS, reactor: Any) -> None:
        self._tcp = tcp
        self._options = options
        self._reactor = reactor

    def connect(self, factory: Any) -> Any:
        return self._tcp.connect(TLSStreamFactory(self._options, factory, self._reactor)).addCallback(
            lambda stream: stream.wrappedProtocol)


def server_endpoint(reactor: Any, host: str, port: int, options: ServerTLS,
                    backlog: int = 50) -> Any:
    """A TLS listener on ``host`` (an IPv4 or IPv6 address; "" for every IPv4 one) and ``port``."""
    cls = endpoints.TCP6ServerEndpoint if _is_ipv6(host) else endpoints.TCP4ServerEndpoint
    return _TLSServerEndpoint(cls(reactor, port, backlog=backlog, interface=host), options, reactor)


def client_endpoint(reactor: Any, host: str, port: int, options: ClientTLS, timeout: float = 30,
                    bind_host: str | None = None) -> Any:
    """A TLS connection to ``host:port`` (IPv4, IPv6 or a host name), made from ``bind_host`` if given.

    ``timeout`` bounds the TCP connect only; the handshake is the caller's
    to bound (it has not completed until ``handshakeCompleted``).
    """
    bind = (bind_host, 0) if bind_host else None
    tcp: Any  # an IStreamClientEndpoint (zope interfaces are not types to mypy)
    if _is_ipv6(host):
        tcp = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    elif _is_ip(host):
        tcp = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    else:
        tcp = endpoints.HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout, bindAddress=bind)
    return _TLSClientEndpoint(tcp, options, reactor)
