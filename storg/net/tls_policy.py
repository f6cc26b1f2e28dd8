"""The TLS settings of every storg end, on the standard library's :mod:`ssl`: one place for both stacks.

The node's listeners and the Twisted client (:mod:`storg.net.tls`, under
:mod:`storg.net.tls_stream`) and storgctl's blocking driver
(:mod:`storg.client.stdlib_tls`) all build their contexts here, so the
versions, options and ciphers cannot drift apart.  This module imports
only :mod:`ssl`: storgctl's fast path may use it.
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 only (1.3 suites are OpenSSL's defaults, all of them AEAD): forward secret AEAD."""


def base_context(*, server: bool) -> ssl.SSLContext:
    """A context with storg's rules and no certificates yet: TLS 1.2 at least (1.3 preferred),
    no compression, tickets or renegotiation, the peer's certificate required, host names not
    checked (a node is named by its certificate's storg identity, not by the address dialled)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_ciphers(TLS12_CIPHERS)
    if server:
        ctx.num_tickets = 0  # TLS 1.3: nothing to resume
    return ctx
