"""Mutual TLS for storg's ports: who a certificate names, and the TLS contexts that check it.

This module knows certificates, OpenSSL and Twisted endpoints; it knows
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

:func:`server_options` and :func:`client_options` return connection
creators (``IOpenSSLServerConnectionCreator`` and
``IOpenSSLClientConnectionCreator``) for Twisted's TLS: TLS 1.2 at least
(1.3 is preferred: OpenSSL negotiates the highest both ends have), ECDHE
with AES-GCM or ChaCha20 for 1.2, no session cache, no session tickets, no
renegotiation, no compression.  A server requires a client certificate
signed by the CA and naming a valid storg identity; a client requires the
server's certificate to be signed by the CA and to name a node (the node
``expected_node``, when given).  A refused handshake sends the peer a TLS
alert and ends the connection; the reason, in one line, is kept for
:func:`describe_tls_failure`.

When is the peer's identity known?
----------------------------------

Twisted calls the protocol's ``connectionMade`` as soon as TCP connects,
*before* the TLS handshake: at that point ``transport.getPeerCertificate()``
is ``None`` and nothing may be trusted.  Twisted signals the end of the
handshake to a protocol that provides
``twisted.internet.interfaces.IHandshakeListener`` by calling its
``handshakeCompleted()`` (``TLSMemoryBIOProtocol`` calls it once
``do_handshake`` succeeds; the endpoints' wrapping protocols pass it on).
From then on :func:`peer_identity` returns the verified identity.  So a
protocol that needs to know who is on the other end is declared
``@implementer(IHandshakeListener)`` and reads ``peer_identity(self.transport)``
in ``handshakeCompleted`` (buffering or refusing any bytes before it).

One asymmetry of TLS 1.3: the client finishes its handshake before the
server has checked the client's certificate.  A client whose certificate
the server refuses sees ``handshakeCompleted`` and then the connection
ending with the server's alert (``describe_tls_failure`` names it).  The
server never calls ``handshakeCompleted`` for a refused client, and never
delivers it a byte.
"""

from __future__ import annotations

import datetime
import ipaddress
import weakref
from collections.abc import Sequence
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL import crypto as openssl_crypto
from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from storg.names import NODE_ID_RE
from storg.net.identity import (
    CLIENT,
    CLIENT_ROLES,
    CLUSTER_RE,
    NODE,
    NODE_ROLE,
    URI_SCHEME,
    USER_NAME_RE,
    VERIFY_ERRORS,
    Identity,
    IdentityError,
    identity_from_names,
    parse_identity_uri,
)
from storg.net.tls_files import TLSConfigError

__all__ = [
    "CLIENT", "CLIENT_ROLES", "CLUSTER_RE", "NODE", "NODE_ROLE", "URI_SCHEME", "USER_NAME_RE",
    "ClientTLS", "Identity", "IdentityError", "ServerTLS", "TLSConfigError", "client_options",
    "describe_tls_failure", "identity_of", "load_certificates", "load_private_key", "parse_identity_uri",
    "peer_identity", "server_endpoint", "client_endpoint",
]

TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 only (1.3 suites are OpenSSL's defaults, all of them AEAD): forward secret AEAD."""


def _as_cryptography(cert: x509.Certificate | openssl_crypto.X509) -> x509.Certificate:
    if isinstance(cert, openssl_crypto.X509):
        return cert.to_cryptography()
    return cert


def identity_of(cert: x509.Certificate | openssl_crypto.X509) -> Identity:
    """The storg identity a certificate (cryptography's or pyOpenSSL's) names.

    :class:`IdentityError` unless it names exactly one, well-formed, with a
    matching common name (see the module docstring).  This reads the
    certificate only: whether the CA signed it is the TLS context's job.
    """
    cert = _as_cryptography(cert)
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


_REFUSALS: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()
"""Why our end refused a peer's certificate, per connection (read by describe_tls_failure)."""


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return f"CN={value.decode('utf-8', 'replace') if isinstance(value, bytes) else value}"
    return cert.subject.rfc4514_string() or "an empty subject"


class _Options:
    """One OpenSSL context, built once from the files; a connection per handshake."""

    def __init__(self, ca_path: str, cert_path: str | None, key_path: str | None, *, server: bool,
                 verify_peer: bool = True) -> None:
        cas = load_certificates(ca_path, "CA certificate")
        self.identity: Identity | None = None
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION
                        | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.set_cipher_list(TLS12_CIPHERS)
        # Without sessions there is nothing to resume; OpenSSL still wants a
        # session id context on a server that asks for client certificates.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_session_id(b"storg")
        if (cert_path is None) != (key_path is None):
            raise TLSConfigError("a certificate and its key go together: give both or neither")
        if cert_path is not None and key_path is not None:
            chain = load_certificates(cert_path)
            key = load_private_key(key_path)
            self.identity = _check_own_certificate(chain[0], cert_path, cas, ca_path)
            try:
                ctx.use_certificate(chain[0])
                for extra in chain[1:]:
                    ctx.add_extra_chain_cert(extra)
                ctx.use_privatekey(key)
                ctx.check_privatekey()
            except SSL.Error:
                raise TLSConfigError(f"{key_path}: the key does not match the certificate in {cert_path}") \
                    from None
        elif server:
            raise TLSConfigError("a TLS server needs its certificate and key")
        try:
            ctx.load_verify_locations(ca_path)
        except SSL.Error:
            raise TLSConfigError(f"{ca_path}: OpenSSL cannot use this CA certificate") from None
        if verify_peer:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
        self.context = ctx

    def _check_peer(self, identity: Identity) -> str | None:
        """Why the verified peer ``identity`` is refused, or None to accept it."""
        return None

    def _verify(self, conn: SSL.Connection, cert: openssl_crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        """OpenSSL's verify callback: the chain's verdict, then the storg identity of the leaf.

        Must never raise (an exception here would surface from OpenSSL in a
        place Twisted does not expect); a refusal returns False, so OpenSSL
        fails the handshake and sends the peer an alert, and the reason is
        kept for :func:`describe_tls_failure`.  The alert names a chain's
        failure (unknown CA, expired certificate, ...); for a refused
        identity it is "internal error", as pyOpenSSL gives a verify callback
        no way to set a finer error.
        """
        try:
            if not ok:  # the chain's verdict, at any depth (a server may send its CA after its own)
                why = VERIFY_ERRORS.get(errno, f"OpenSSL verify error {errno}")
                _REFUSALS.setdefault(conn, f"certificate of {_subject(cert.to_cryptography())} refused: {why}")
                return False
            if depth != 0:
                return True
            leaf = cert.to_cryptography()
            try:
                identity = identity_of(leaf)
            except IdentityError as exc:
                _REFUSALS[conn] = f"certificate of {_subject(leaf)} refused: {exc}"
                return False
            refusal = self._check_peer(identity)
            if refusal is not None:
                _REFUSALS[conn] = f"certificate of {identity} refused: {refusal}"
                return False
            return True
        except Exception as exc:  # never let an exception into OpenSSL
            _REFUSALS[conn] = f"certificate refused: {type(exc).__name__}: {exc}"
            return False


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS(_Options):
    """A server's TLS: its certificate, and a client certificate from the CA required of every peer.

    ``require_client_certificate=False`` is for the S3 port only: S3 clients
    (boto3, rclone, ...) show no certificate, and every S3 request is
    authenticated by its own signature (AWS Signature V4) instead.
    """

    def __init__(self, ca_path: str, cert_path: str, key_path: str, *,
                 require_client_certificate: bool = True) -> None:
        super().__init__(ca_path, cert_path, key_path, server=True, verify_peer=require_client_certificate)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS(_Options):
    """A client's TLS: the server must be a node of the CA (``expected_node``, if given)."""

    def __init__(self, ca_path: str, cert_path: str | None, key_path: str | None,
                 expected_node: str | None = None) -> None:
        if expected_node is not None and not NODE_ID_RE.fullmatch(expected_node):
            raise ValueError(f"invalid node id {expected_node!r}")
        self.expected_node = expected_node
        super().__init__(ca_path, cert_path, key_path, server=False)

    def _check_peer(self, identity: Identity) -> str | None:
        if identity.kind != NODE:
            return "the server is not a node"
        if self.expected_node is not None and identity.name != self.expected_node:
            return f"expected node {self.expected_node}"
        return None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)


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
    the module docstring for ``IHandshakeListener``), or if the transport
    is not TLS.  The certificate was verified against the CA and its
    identity checked during the handshake, so this does not raise for a
    connection made with :func:`server_options` or :func:`client_options`.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    if cert is None:
        return None
    return identity_of(cert)


def _ssl_error_text(error: BaseException) -> str:
    """OpenSSL's error queue, in one line (``certificate verify failed``, an alert's name, ...)."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0] if isinstance(item, tuple) and item]
        if reasons:
            return "; ".join(reasons)
    return " ".join(str(error).split()) or type(error).__name__


def describe_tls_failure(transport: Any, reason: Failure | BaseException | None = None) -> str:
    """One line saying why a TLS connection ended: our refusal of the peer, or OpenSSL's error.

    Call it from ``connectionLost(reason)`` with the protocol's transport:
    a certificate this end refused is described by name and cause
    ("certificate of node n2 refused: expected node n1"); otherwise the
    OpenSSL error (for instance the alert the peer sent: "tlsv13 alert
    certificate required").
    """
    handle = getattr(transport, "getHandle", None)
    if handle is not None:
        try:
            refusal = _REFUSALS.get(handle())
        except Exception:
            refusal = None
        if refusal is not None:
            return refusal
    if reason is None:
        return "connection closed"
    error = reason.value if isinstance(reason, Failure) else reason
    return "connection closed" if error is None else _ssl_error_text(error)


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


def server_endpoint(reactor: Any, host: str, port: int, options: ServerTLS,
                    backlog: int = 50) -> endpoints.SSL4ServerEndpoint:
    """A TLS listener on ``host`` (an IPv4 or IPv6 address; "" for every IPv4 one) and ``port``."""
    return endpoints.SSL4ServerEndpoint(reactor, port, options, backlog=backlog, interface=host)


def client_endpoint(reactor: Any, host: str, port: int, options: ClientTLS, timeout: float = 30,
                    bind_host: str | None = None) -> IStreamClientEndpoint:
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
    return endpoints.wrapClientTLS(cast(IOpenSSLClientConnectionCreator, options), tcp)
