"""The TLS material of a cluster: a CA, and node and client certificates naming storg identities.

``storgctl certs init`` and ``storgctl certs client`` are thin layers over
:func:`init_dir` and :func:`add_client`; tests use :func:`make_ca` and
:func:`issue` directly (with an explicit validity, for expired
certificates).  What a certificate names is the scheme of
:mod:`storg.net.tls` (its module docstring); this module writes it.

Choices:

* keys are EC P-256 (ECDSA with SHA-256): small, fast, and supported by
  every TLS stack storg's clients may use;
* the CA is valid 10 years (:data:`CA_DAYS`), node and client certificates
  2 years (:data:`LEAF_DAYS`), both starting 5 minutes in the past so that
  a peer whose clock is a little behind accepts them at once;
* the CA may sign leaves only (path length 0); a leaf is not a CA, may only
  sign (digitalSignature), and is for serverAuth + clientAuth (nodes) or
  clientAuth (clients);
* node certificates carry DNS and IP subjectAltNames for the ``hosts``
  given plus ``127.0.0.1``, ``::1`` and ``localhost``, for HTTPS clients
  that check host names (storg checks the node id instead);
* private keys are written mode 0600 from their creation (``os.open`` with
  the mode, never a chmod after the fact), certificates 0644; a file is
  written under a temporary name and linked into place, so an existing
  file is never replaced unless ``force`` is given, and a crash never
  leaves half a file.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from storg.config import NODE_ID_RE
from storg.net.tls import CLIENT_ROLES, Identity, IdentityError, TLSConfigError, load_certificates, load_private_key
from storg.storage.fsutil import fsync_dir, write_all

CA_DAYS = 3650
LEAF_DAYS = 730
CLOCK_SKEW = datetime.timedelta(minutes=5)
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
ORGANIZATION = "storg"

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
ADMIN = "admin"
RESERVED_NAMES = ("ca",)
"""Names whose files would collide with the CA's (``ca.pem``, ``ca-key.pem``)."""

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CertsError(Exception):
    """A usage or local error of certificate generation: one line (storgctl exit 2)."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _validity(days: int, not_before: datetime.datetime | None,
              not_after: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before if not_before is not None else datetime.datetime.now(datetime.UTC) - CLOCK_SKEW
    end = not_after if not_after is not None else start + CLOCK_SKEW + datetime.timedelta(days=days)
    if end <= start:
        raise ValueError("a certificate's validity must end after it starts")
    return start, end


def make_ca(common_name: str | None = None, *, days: int = CA_DAYS, not_before: datetime.datetime | None = None,
            not_after: datetime.datetime | None = None) -> Issued:
    """A new self-signed CA.  Its default name has a random suffix, so two clusters' CAs differ by name."""
    key = new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"storg CA {secrets.token_hex(4)}"),
    ])
    start, end = _validity(days, not_before, not_after)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """DNS and IP subjectAltNames for ``hosts``, after the defaults, without repeats.

    :class:`CertsError` for a host that is neither an IP address nor a DNS name.
    """
    names: list[x509.GeneralName] = []
    for host in [*DEFAULT_HOSTS, *hosts]:
        host = host.strip()
        general: x509.GeneralName
        try:
            general = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            labels = host.rstrip(".").split(".")
            if not host or len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
                raise CertsError(f"invalid host {host!r}: neither an IP address nor a DNS name") from None
            general = x509.DNSName(host.rstrip(".").lower())
        if general not in names:
            names.append(general)
    return names


def issue(ca: Issued, identity: Identity, *, hosts: Sequence[str] = (), days: int = LEAF_DAYS,
          not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
          key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    """A certificate for ``identity`` signed by ``ca``: a node's (with host names) or a client's.

    ``not_before`` / ``not_after`` override the validity (tests make expired
    certificates with them).
    """
    key = key or new_key()
    start, end = _validity(days, not_before, not_after)
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    if identity.is_node:
        alt_names += host_names(hosts)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    elif hosts:
        raise ValueError("host names are for node certificates")
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                                 x509.NameAttribute(NameOID.COMMON_NAME, identity.name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


# -- files -------------------------------------------------------------------------------------


def write_file(path: str, data: bytes, mode: int, *, force: bool = False) -> None:
    """Write ``path`` whole, created with ``mode``; an existing file is replaced only with ``force``.

    The bytes go to a new temporary file beside ``path`` (opened with
    O_EXCL and ``mode``, so a private key is never readable by others, not
    even for a moment), are fsynced, and the file is then linked into place
    (refused if ``path`` exists) or, with ``force``, renamed over it.
    """
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any beyond ``mode``
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise CertsError(f"{path} exists (use --force to replace it)") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # A file system without hard links: check, then rename (not atomic against a racer).
                if os.path.lexists(path):
                    raise CertsError(f"{path} exists (use --force to replace it)") from None
                os.rename(temp, path)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    fsync_dir(directory)


def _prepare_dir(directory: str) -> None:
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CertsError(f"{directory} is not a directory")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CertsError(f"cannot create {directory}: {exc.strerror or exc}") from None


def _write_all(files: Sequence[tuple[str, bytes, int]], force: bool) -> list[str]:
    """Write every file, having first refused (unless ``force``) if any of them exists."""
    if not force:
        for path, _, _ in files:
            if os.path.lexists(path):
                raise CertsError(f"{path} exists (use --force to replace it)")
    written = []
    for path, data, mode in files:
        try:
            write_file(path, data, mode, force=force)
        except OSError as exc:
            raise CertsError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


def pair_files(directory: str, name: str, issued: Issued) -> list[tuple[str, bytes, int]]:
    """``NAME.pem`` (0644) and ``NAME-key.pem`` (0600) in ``directory``."""
    return [(os.path.join(directory, f"{name}.pem"), issued.cert_pem(), 0o644),
            (os.path.join(directory, f"{name}-key.pem"), issued.key_pem(), 0o600)]


def init_dir(directory: str, nodes: Sequence[str], hosts: Sequence[str] = (), *,
             force: bool = False) -> list[str]:
    """A new cluster's material: ``ca.pem`` + ``ca-key.pem``, a pair per node, the ``admin`` pair.

    Every node certificate carries the same ``hosts`` (and the defaults).
    Returns the paths written.  :class:`CertsError` for a bad node id or
    host, a name that collides with another file, or an existing file
    without ``force`` (nothing is written then).
    """
    if not nodes:
        raise CertsError("--nodes: at least one node id")
    seen: set[str] = set()
    for node_id in nodes:
        if not NODE_ID_RE.fullmatch(node_id):
            raise CertsError(f"--nodes: invalid node id {node_id!r} (1-64 of [a-z0-9_-])")
        if node_id in RESERVED_NAMES or node_id == ADMIN:
            raise CertsError(f"--nodes: a node may not be named {node_id!r} (its files would be the "
                             f"{'CA' if node_id in RESERVED_NAMES else 'admin'}'s)")
        if node_id in seen:
            raise CertsError(f"--nodes: {node_id!r} given twice")
        seen.add(node_id)
    host_names(hosts)  # a bad host is refused before anything is generated
    _prepare_dir(directory)
    ca = make_ca()
    files = [(os.path.join(directory, CA_CERT), ca.cert_pem(), 0o644),
             (os.path.join(directory, CA_KEY), ca.key_pem(), 0o600)]
    for node_id in nodes:
        files += pair_files(directory, node_id, issue(ca, Identity.node(node_id), hosts=hosts))
    files += pair_files(directory, ADMIN, issue(ca, Identity.client(ADMIN, "admin")))
    return _write_all(files, force)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def load_ca(directory: str) -> Issued:
    """The CA of ``directory`` (``ca.pem`` and ``ca-key.pem``), checked to be a pair."""
    cert_path, key_path = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
    try:
        cert = load_certificates(cert_path, "CA certificate")[0]
        key = load_private_key(key_path)
    except TLSConfigError as exc:
        raise CertsError(str(exc)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{key_path}: not an EC key (storgctl certs makes P-256 keys)")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertsError(f"{key_path}: this key is not the key of {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertsError(f"{cert_path}: not a CA certificate")
    return Issued(cert, key)


def add_client(directory: str, name: str, role: str, *, force: bool = False) -> list[str]:
    """``NAME.pem`` + ``NAME-key.pem`` for a client of ``role``, signed by the CA of ``directory``."""
    if role not in CLIENT_ROLES:
        raise CertsError(f"--role: invalid role {role!r} (one of {', '.join(CLIENT_ROLES)})")
    if name in RESERVED_NAMES:
        raise CertsError(f"a client may not be named {name!r} (its files would be the CA's)")
    try:
        identity = Identity.client(name, role)
    except IdentityError as exc:
        raise CertsError(str(exc)) from None
    ca = load_ca(directory)
    return _write_all(pair_files(directory, name, issue(ca, identity)), force)


def add_node(directory: str, node_id: str, hosts: Sequence[str] = (), *, force: bool = False) -> list[str]:
    """``ID.pem`` + ``ID-key.pem`` for a node added later (``member add``), signed by the CA of ``directory``."""
    if not NODE_ID_RE.fullmatch(node_id):
        raise CertsError(f"invalid node id {node_id!r} (1-64 of [a-z0-9_-])")
    if node_id in RESERVED_NAMES or node_id == ADMIN:
        raise CertsError(f"a node may not be named {node_id!r}")
    host_names(hosts)
    ca = load_ca(directory)
    return _write_all(pair_files(directory, node_id, issue(ca, Identity.node(node_id), hosts=hosts)), force)
