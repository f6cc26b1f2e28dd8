"""Certificates a node must refuse, made for tests from a cluster's ``certs/`` folder.

Every listener is tested against the same strangers (issue 15): a client
with no certificate, one from another CA, an expired one, and a node
certificate naming a node that is not a member.  Each is a
``(ca, cert, key)`` triple of file paths, as storgctl's ``--ca/--cert/--key``
take them; the CA is always the cluster's, so the stranger does trust the
nodes, and only the node's check of the stranger can refuse it.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

from storg.net.certs import init_dir, issue, load_ca, pair_files, write_file
from storg.net.tls import Identity
from storg.wire import CODEC, CodecError

Triple = tuple[str, str | None, str | None]


def strangers(certs: Path, scratch: Path) -> dict[str, Triple]:
    """Name -> (ca, cert, key) of each certificate the cluster of ``certs`` must refuse."""
    scratch.mkdir(parents=True, exist_ok=True)
    ca = str(certs / "ca.pem")
    other = scratch / "other-ca"
    init_dir(str(other), ["n1"])  # a whole other cluster's CA, with its own admin
    cluster_ca = load_ca(str(certs))
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(cluster_ca, Identity.client("old", "admin"),
                    not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
    outsider = issue(cluster_ca, Identity.node("n9"))
    for name, issued in (("expired", expired), ("n9", outsider)):
        for path, data, mode in pair_files(str(scratch), name, issued):
            write_file(path, data, mode, force=True)
    return {
        "no certificate": (ca, None, None),
        "another CA": (ca, str(other / "admin.pem"), str(other / "admin-key.pem")),
        "expired": (ca, str(scratch / "expired.pem"), str(scratch / "expired-key.pem")),
        "a node that is not a member": (ca, str(scratch / "n9.pem"), str(scratch / "n9-key.pem")),
    }


def storgctl_args(triple: Triple) -> list[str]:
    """storgctl's TLS options for ``triple`` (no --cert/--key for the certificate-less one)."""
    ca, cert, key = triple
    args = ["--ca", ca]
    if cert is not None and key is not None:
        args += ["--cert", cert, "--key", key]
    return args


def attempt(host: str, port: int, triple: Triple, request: Any, timeout: float = 10.0) -> tuple[str, Any]:
    """Connect as a stranger would, send ``request`` as one frame, and say what came back.

    A stranger's own tool, not storgctl: it presents whatever certificate it
    has (storgctl would refuse to use an expired one, or one its CA did not
    sign) and does not check the server's.  Blocking (the standard
    library's ``ssl``): call it from a thread when a reactor runs here.
    Returns ``("answered", reply)`` with the decoded reply frame, or
    ``("refused", why)`` when the handshake or the connection failed.
    """
    _, cert, key = triple
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    body = CODEC.encode(request)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(struct.pack("!I", len(body)) + body)
                header = _read(tls, 4)
                if header is None:
                    return "refused", "the node closed the connection"
                reply = _read(tls, struct.unpack("!I", header)[0])
                if reply is None:
                    return "refused", "the node closed the connection mid-frame"
    except (ssl.SSLError, OSError) as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
    try:
        return "answered", CODEC.decode(reply)
    except CodecError as exc:
        return "answered", f"undecodable reply: {exc}"


def _read(sock: ssl.SSLSocket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            return None
        data += more
    return data
