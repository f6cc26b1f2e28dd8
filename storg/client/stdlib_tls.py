"""storgctl's TLS with the standard library's :mod:`ssl`: the checks :mod:`storg.net.tls` makes.

The blocking driver (:mod:`storg.client.blocking`) must not import
cryptography or pyOpenSSL, which cost a short-lived storgctl more than its
request.  So its TLS is the standard library's, configured to the same
rules: TLS 1.2 at least, the same TLS 1.2 ciphers, no compression, tickets
or renegotiation; the node's certificate chain must lead to the cluster's
CA and the certificate must name a storg node (the node the client means
to reach, when it knows it: ``expected_node``), by the identity rules of
:mod:`storg.net.identity`; our client certificate is presented.  Host
names are not checked: nodes are named by their certificate's identity,
not by the address dialled.  Any refusal raises :class:`TLSRefusedError`.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from storg.net.errors import TLSRefused
from storg.net.identity import VERIFY_ERRORS, IdentityError, identity_of_peercert
from storg.net.tls_files import TLSConfigError

__all__ = ["BlockingTLS", "TLSRefusedError", "describe_ssl_error"]


class TLSRefusedError(ConnectionError, TLSRefused):
    """A certificate refused: the node's here (wrong CA, not a node, not the expected node), or
    ours there (the node's alert, which TLS 1.3 delivers after our side of the handshake)."""



class BlockingTLS:
    """The client TLS of storgctl with the standard library: the CA's nodes only, our certificate shown."""

    def __init__(self, ca: str, cert: str | None, key: str | None) -> None:
        import ssl

        from storg.net.tls_policy import base_context

        self.ssl = ssl
        ctx = base_context(server=False)
        try:
            ctx.load_verify_locations(ca)
        except FileNotFoundError as exc:
            raise TLSConfigError(f"{ca}: cannot read the CA certificate: {exc.strerror or exc}") from None
        except (ssl.SSLError, OSError, ValueError):
            raise TLSConfigError(f"{ca}: not a PEM CA certificate") from None
        if cert is not None and key is not None:
            _check_own_certificate(cert)
            try:
                ctx.load_cert_chain(cert, key)
            except FileNotFoundError as exc:
                raise TLSConfigError(f"{exc.filename}: cannot read it: {exc.strerror or exc}") from None
            except (ssl.SSLError, OSError, ValueError):
                raise TLSConfigError(f"{key}: the key does not match the certificate in {cert}, "
                                     "or is not an unencrypted PEM private key") from None
        self.context = ctx

    def wrap(self, sock: socket.socket, expected_node: str | None) -> Any:
        """The TLS socket over ``sock``, handshake done and the node's certificate checked."""
        ssl = self.ssl
        try:
            tls = self.context.wrap_socket(sock, do_handshake_on_connect=False)
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            why = VERIFY_ERRORS.get(exc.verify_code, exc.verify_message or "refused")
            raise TLSRefusedError(f"TLS handshake failed: the node's certificate refused: {why}") from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError):
            # A node that died or closed mid-handshake: worth trying again, elsewhere.
            raise ConnectionError("connection lost before the TLS handshake completed") from None
        except ssl.SSLError as exc:
            raise TLSRefusedError(f"TLS handshake failed: {describe_ssl_error(exc)}") from None
        try:
            identity = identity_of_peercert(tls.getpeercert() or {})
        except IdentityError as exc:
            tls.close()
            raise TLSRefusedError(f"TLS handshake failed: the node's certificate refused: {exc}") from None
        refusal = None
        if not identity.is_node:
            refusal = "the server is not a node"
        elif expected_node is not None and identity.name != expected_node:
            refusal = f"expected node {expected_node}"
        if refusal is not None:
            tls.close()
            raise TLSRefusedError(f"TLS handshake failed: certificate of {identity} refused: {refusal}")
        return tls


def describe_ssl_error(exc: Exception) -> str:
    """OpenSSL's reason in words (``tlsv13 alert certificate required``, ...)."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_own_certificate(path: str) -> None:
    """Our certificate names a storg identity and is in its validity period (as storg.net.tls checks).

    Read with the standard library's certificate decoder; where a Python
    lacks it, the node's refusal in the handshake says the same, later.
    """
    import ssl

    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return
    try:
        cert = decode(path)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{path}: cannot read the certificate: {exc.strerror or exc}") from None
    except (ssl.SSLError, OSError, ValueError):
        raise TLSConfigError(f"{path}: not a PEM certificate") from None
    try:
        identity_of_peercert(cert)
    except IdentityError as exc:
        raise TLSConfigError(f"{path}: {exc}") from None
    now = time.gmtime()[:6]
    if _utc_fields(cert["notAfter"]) < now:
        raise TLSConfigError(f"{path}: the certificate expired on {cert['notAfter']}")
    if _utc_fields(cert["notBefore"]) > now:
        raise TLSConfigError(f"{path}: the certificate is not valid before {cert['notBefore']}")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _utc_fields(text: str) -> tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) of a certificate time (``Jun  1 12:00:00 2026 GMT``).

    Compared with ``time.gmtime()[:6]`` instead of turned into seconds with
    ``ssl.cert_time_to_seconds``, whose ``strptime`` and ``calendar``
    imports cost a short-lived storgctl about as much as its request's
    frames; a malformed time is a ValueError either way.
    """
    month, day, clock, year, zone = text.split()
    hour, minute, second = clock.split(":")
    if zone != "GMT":
        raise ValueError(f"time data {text!r} is not in GMT")
    return int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second)
