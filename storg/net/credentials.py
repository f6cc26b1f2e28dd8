"""One party's TLS material, loaded once: what it serves with and what it dials with.

:mod:`storg.net.tls` builds one TLS context per call, reading and checking
the files each time.  A node needs one server context for all its
listeners and a client context per peer it dials (each demands that the
other end's certificate name the node it meant to reach); storgctl needs
one client context.  :class:`TLSCredentials` loads the files once, checks
them once (a node's certificate must name the node), and hands out those
contexts, cached, so that a thousand chunk connections cost one parse.
"""

from __future__ import annotations

import os
from typing import Any

from storg.net.tls import (
    ClientTLS,
    Identity,
    ServerTLS,
    client_options,
    server_options,
)
from storg.net.tls_files import TLSConfigError, tls_files

__all__ = ["TLSCredentials", "TLSConfigError"]


class TLSCredentials:
    """A CA, and a certificate with its key, checked against each other and against who we are.

    ``node_id``: the node this material belongs to; its certificate must
    name exactly that node (``storg://node/<id>``), or construction fails
    with :class:`TLSConfigError`.  Without ``node_id`` (storgctl) the
    certificate may name any identity, and :meth:`server` is refused.
    """

    def __init__(self, ca: str | os.PathLike[str], cert: str | os.PathLike[str] | None,
                 key: str | os.PathLike[str] | None, *, node_id: str | None = None) -> None:
        self.ca = os.fspath(ca)
        self.cert = None if cert is None else os.fspath(cert)
        self.key = None if key is None else os.fspath(key)
        self.node_id = node_id
        self._clients: dict[str | None, ClientTLS] = {}
        self._server: ServerTLS | None = None
        self._https: ServerTLS | None = None
        first = self.client(None)  # reads and checks every file now, so errors surface at start
        self.identity: Identity | None = first.identity
        if node_id is not None:
            if self.cert is None or self.key is None:
                raise TLSConfigError("a node needs its certificate and key")
            if self.identity is None or not self.identity.is_node or self.identity.name != node_id:
                raise TLSConfigError(f"{self.cert}: the certificate names {self.identity}, not node {node_id}")
            self._server = server_options(self.ca, self.cert, self.key)

    def server(self) -> ServerTLS:
        """The listeners' TLS: a client certificate from our CA required of every connection."""
        if self._server is None:
            raise TLSConfigError("only a node's credentials can serve")
        return self._server

    def https_server(self) -> ServerTLS:
        """The S3 port's TLS: this node's certificate, no client certificate asked for
        (requests carry AWS signatures instead; storg.gateway checks them)."""
        if self._server is None or self.cert is None or self.key is None:
            raise TLSConfigError("only a node's credentials can serve")
        if self._https is None:
            self._https = ServerTLS(self.ca, self.cert, self.key, require_client_certificate=False)
        return self._https

    def client(self, expected_node: str | None = None) -> ClientTLS:
        """TLS for dialing a node; its certificate must name ``expected_node`` when given."""
        options = self._clients.get(expected_node)
        if options is None:
            options = client_options(self.ca, self.cert, self.key, expected_node)
            self._clients[expected_node] = options
        return options

    def __repr__(self) -> str:
        return f"TLSCredentials({self.identity}, ca={self.ca!r})"


def credentials_from_env(env: Any, ca: str | None, cert: str | None, key: str | None) -> TLSCredentials | None:
    """storgctl's TLS: the options given, else ``STORG_CA``/``STORG_CERT``/``STORG_KEY``; None if neither.

    Raises TLSConfigError when the set is incomplete: a certificate without
    its key, or a certificate without the CA that checks the nodes.
    """
    files = tls_files(env, ca, cert, key)
    if files is None:
        return None
    ca, cert, key = files
    return TLSCredentials(ca, cert, key)


def from_environment() -> TLSCredentials | None:
    """``STORG_CA``/``STORG_CERT``/``STORG_KEY`` of this process, as storgctl reads them (None if unset)."""
    return credentials_from_env(os.environ, None, None, None)
