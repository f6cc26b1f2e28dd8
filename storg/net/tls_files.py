"""Which TLS files a client uses: its options, else ``STORG_CA``/``STORG_CERT``/``STORG_KEY``.

Apart from :mod:`storg.net.tls` (OpenSSL) and :mod:`storg.net.credentials`,
so that both of storgctl's TLS stacks (pyOpenSSL under Twisted, the standard
library's :mod:`ssl` under the blocking driver) resolve and refuse the same
sets of files with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping


class TLSConfigError(Exception):
    """TLS material that cannot be used: one line, naming the file."""


def tls_files(env: Mapping[str, str], ca: str | None, cert: str | None,
              key: str | None) -> tuple[str, str | None, str | None] | None:
    """(ca, cert, key) from the options given, else the environment; None for plain TCP.

    Raises TLSConfigError when the set is incomplete: a certificate without
    its key, or a certificate without the CA that checks the nodes.
    """
    ca = ca or env.get("STORG_CA") or None
    cert = cert or env.get("STORG_CERT") or None
    key = key or env.get("STORG_KEY") or None
    if ca is None and cert is None and key is None:
        return None
    if ca is None:
        raise TLSConfigError("--cert and --key need --ca (or STORG_CA): the CA that signed the nodes' certificates")
    if (cert is None) != (key is None):
        raise TLSConfigError("--cert and --key go together (or STORG_CERT and STORG_KEY)")
    return ca, cert, key
