"""Who a storg certificate names: the identity scheme, parsed from text, without OpenSSL.

The scheme is described in :mod:`storg.net.tls` (``storg://node/<id>``,
``storg://client/<user>?role=<role>``).  It lives apart from the TLS
contexts so that a client that checks certificates with the standard
library's :mod:`ssl` (storgctl's blocking driver, :mod:`storg.client.blocking`)
applies exactly the same rules without importing cryptography or pyOpenSSL.
"""

from __future__ import annotations

import re

from storg.names import NODE_ID_RE
from storg.wire.record import record

URI_SCHEME = "storg"
NODE = "node"
CLIENT = "client"
NODE_ROLE = "node"
CLIENT_ROLES = ("readonly", "readwrite", "admin")
"""The roles a client certificate may name, weakest first."""

USER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
CLUSTER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_URI_RE = re.compile(r"storg://(node|client)/([^/?#]*)(?:\?([^#]*))?")


class IdentityError(ValueError):
    """A certificate that does not name exactly one valid storg identity."""


@record
class Identity:
    """Who is on the other end: a node (``role`` ``node``) or a user with one client role."""

    kind: str
    """``node`` or ``client``."""
    name: str
    """The node id, or the user name."""
    role: str
    """``node`` for a node; ``readonly``, ``readwrite`` or ``admin`` for a client."""
    cluster: str | None = None
    """The cluster the certificate is limited to, if it says so (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.kind == NODE:
            if not NODE_ID_RE.fullmatch(self.name):
                raise IdentityError(f"invalid node id {self.name!r} (1-64 of [a-z0-9_-])")
            if self.role != NODE_ROLE:
                raise IdentityError(f"a node's role is {NODE_ROLE!r}, not {self.role!r}")
        elif self.kind == CLIENT:
            if not USER_NAME_RE.fullmatch(self.name):
                raise IdentityError(f"invalid user name {self.name!r} "
                                    "(1-64 of [a-z0-9_.-], starting with a letter or digit)")
            if self.role not in CLIENT_ROLES:
                raise IdentityError(f"invalid role {self.role!r} (one of {', '.join(CLIENT_ROLES)})")
        else:
            raise IdentityError(f"invalid identity kind {self.kind!r} (node or client)")
        if self.cluster is not None and not CLUSTER_RE.fullmatch(self.cluster):
            raise IdentityError(f"invalid cluster {self.cluster!r} (1-64 of [A-Za-z0-9._-])")

    @classmethod
    def node(cls, node_id: str, cluster: str | None = None) -> Identity:
        return cls(NODE, node_id, NODE_ROLE, cluster)

    @classmethod
    def client(cls, name: str, role: str, cluster: str | None = None) -> Identity:
        return cls(CLIENT, name, role, cluster)

    @property
    def is_node(self) -> bool:
        return self.kind == NODE

    def uri(self) -> str:
        """The subjectAltName URI that names this identity."""
        params = [] if self.kind == NODE else [f"role={self.role}"]
        if self.cluster is not None:
            params.append(f"cluster={self.cluster}")
        query = "?" + "&".join(params) if params else ""
        return f"{URI_SCHEME}://{self.kind}/{self.name}{query}"

    def __str__(self) -> str:
        return f"node {self.name}" if self.kind == NODE else f"client {self.name} ({self.role})"


def parse_identity_uri(uri: str) -> Identity:
    """The identity a ``storg://`` URI names; :class:`IdentityError` unless it is exactly well-formed."""
    match = _URI_RE.fullmatch(uri)
    if match is None:
        raise IdentityError(f"malformed storg identity URI {uri!r}")
    kind, name, query = match.groups()
    params: dict[str, str] = {}
    if query is not None:
        for part in query.split("&"):
            key, sep, value = part.partition("=")
            if not sep or key in params:
                raise IdentityError(f"malformed storg identity URI {uri!r}")
            params[key] = value
    allowed = {"cluster"} if kind == NODE else {"role", "cluster"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise IdentityError(f"storg identity URI {uri!r}: unknown parameter {unknown[0]!r}")
    if kind == NODE:
        return Identity.node(name, params.get("cluster"))
    if "role" not in params:
        raise IdentityError(f"storg identity URI {uri!r}: a client names its role (?role=...)")
    return Identity.client(name, params["role"], params.get("cluster"))


def identity_from_names(uris: list[str] | None, common_names: list[str]) -> Identity:
    """The identity a certificate names, from its subjectAltName URIs (None: it has no
    subjectAltName) and its subject's common names; :class:`IdentityError` unless exactly one
    well-formed storg URI is there, with a matching common name (the module docstring of
    :mod:`storg.net.tls`)."""
    if uris is None:
        raise IdentityError("certificate names no storg identity (no subjectAltName)")
    storg_uris = [u for u in uris if u.lower().startswith(URI_SCHEME + ":")]
    if not storg_uris:
        raise IdentityError("certificate names no storg identity (no storg:// subjectAltName URI)")
    if len(storg_uris) > 1:
        raise IdentityError(f"certificate names {len(storg_uris)} storg identities; exactly one is allowed")
    identity = parse_identity_uri(storg_uris[0])
    if len(common_names) != 1 or common_names[0] != identity.name:
        common = ", ".join(repr(n) for n in common_names) or "none"
        raise IdentityError(f"certificate's common name ({common}) is not its identity's name "
                            f"{identity.name!r}")
    return identity


def identity_of_peercert(cert: dict) -> Identity:
    """The identity of a peer certificate as the standard library's ``SSLSocket.getpeercert()`` gives it."""
    san = cert.get("subjectAltName")
    uris = None if not san else [value for kind, value in san if kind == "URI"]
    common_names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return identity_from_names(uris, common_names)


VERIFY_ERRORS = {
    2: "its issuer is not this cluster's CA",
    7: "its signature is bad",
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed, not signed by this cluster's CA",
    19: "it is not signed by this cluster's CA",  # the chain sent ends in another self-signed CA
    20: "it is not signed by this cluster's CA",
    21: "it is not signed by this cluster's CA",
    24: "its issuer is not a CA",
    26: "its key usage does not allow this use",
}
"""OpenSSL's X509_V_ERR_* codes a peer's certificate is likely to fail with, in words
(the standard library's ``SSLCertVerificationError.verify_code``)."""
