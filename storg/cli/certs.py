"""``storgctl certs init`` and ``storgctl certs client``: a cluster's TLS material, made locally.

A thin layer over :mod:`storg.net.certs` (which says what the files hold
and how they are written): these commands parse the lists, call it, and
print the files written.  Nothing is sent to a cluster, so the global
options (``--cluster``, ``--timeout``) do not matter; every problem is a
usage or local error, exit 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from storg.net.certs import CLIENT_ROLES, CertsError, add_client, add_node, init_dir

EXIT_OK = 0


def add_parsers(sub: Any) -> None:
    """Add the ``certs`` command to storgctl's subparsers."""
    certs = sub.add_parser("certs", help="make a cluster's TLS material: a CA, node and client certificates")
    csub = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND", parser_class=type(certs))
    csub.required = True
    init = csub.add_parser("init", help="a new CA in DIR, a certificate per node, and the admin's")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--nodes", required=True, metavar="ID,ID,...", help="the node ids")
    init.add_argument("--hosts", default="", metavar="H,...",
                      help="IP addresses or DNS names every node certificate also names "
                           "(127.0.0.1, ::1 and localhost always)")
    init.add_argument("--force", action="store_true", help="replace existing files")
    node = csub.add_parser("node", help="a certificate for a node added later, signed by DIR's CA")
    node.add_argument("dir", metavar="DIR")
    node.add_argument("node_id", metavar="ID")
    node.add_argument("--hosts", default="", metavar="H,...", help="as for init")
    node.add_argument("--force", action="store_true", help="replace existing files")
    client = csub.add_parser("client", help="a client certificate signed by DIR/ca.pem and DIR/ca-key.pem")
    client.add_argument("dir", metavar="DIR")
    client.add_argument("name", metavar="NAME", help="the user name")
    client.add_argument("--role", required=True, metavar="ROLE", help=" or ".join(CLIENT_ROLES))
    client.add_argument("--force", action="store_true", help="replace existing files")


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def run_certs(args: argparse.Namespace) -> int:
    """Write the files and print their paths; :class:`CertsError` (exit 2) for any problem."""
    if args.certs_command == "init":
        written = init_dir(args.dir, _list(args.nodes), _list(args.hosts), force=args.force)
    elif args.certs_command == "node":
        written = add_node(args.dir, args.node_id, _list(args.hosts), force=args.force)
    elif args.certs_command == "client":
        written = add_client(args.dir, args.name, args.role, force=args.force)
    else:  # pragma: no cover - argparse allows no other
        raise CertsError(f"unknown certs command {args.certs_command!r}")
    if args.json:
        print(json.dumps(written))
    else:
        print("\n".join(written))
    return EXIT_OK


__all__ = ["CertsError", "add_parsers", "run_certs"]
