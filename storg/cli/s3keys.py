"""``storgctl s3 key create NAME --role ROLE``, ``s3 key list``, ``s3 key revoke ID``.

S3 access keys live in the cluster's state machine (through Raft), so
every node's gateway knows them at once.  ``create`` prints the key's id
and secret once (they are made by the client library with :mod:`secrets`);
``list`` never shows secrets.  All three need the admin role; a bad role is
a usage error (exit 2) found before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from storg.client.api import StorgClient
from storg.client.errors import NotFoundError
from storg.fsm.objects import S3_ROLES

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class S3CommandError(Exception):
    """A refusal or usage error of an s3 command, with its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parsers(sub: Any) -> None:
    """Add the ``s3`` command to storgctl's subparsers."""
    s3 = sub.add_parser("s3", help="the S3 gateway's access keys")
    ssub = s3.add_subparsers(dest="s3_command", metavar="SUBCOMMAND", parser_class=type(s3))
    ssub.required = True
    key = ssub.add_parser("key", help="create, list or revoke S3 access keys (admin)")
    ksub = key.add_subparsers(dest="s3_key_command", metavar="SUBCOMMAND", parser_class=type(s3))
    ksub.required = True
    create = ksub.add_parser("create", help="make a key; prints its id and secret (shown only now)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--role", required=True, metavar="ROLE", help="one of " + ", ".join(S3_ROLES))
    ksub.add_parser("list", help="id, name, role and creation time of each key (never the secrets)")
    revoke = ksub.add_parser("revoke", help="revoke a key: the gateways refuse it from now on")
    revoke.add_argument("key_id", metavar="ID")


def check_args(args: argparse.Namespace) -> None:
    if args.s3_key_command == "create":
        if args.role not in S3_ROLES:
            raise S3CommandError(EXIT_USAGE, f"--role: {args.role!r} is not one of {', '.join(S3_ROLES)}")
        if not args.name or len(args.name.encode()) > 255:
            raise S3CommandError(EXIT_USAGE, "NAME: 1 to 255 bytes")


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


async def run_s3(client: StorgClient, args: argparse.Namespace) -> int:
    command = args.s3_key_command
    if command == "create":
        key_id, secret = await client.s3_key_create(args.name, args.role)
        if args.json:
            print(json.dumps({"id": key_id, "secret": secret, "name": args.name, "role": args.role}))
        else:
            print(f"access key id:     {key_id}\nsecret access key: {secret}\n"
                  "(the secret is shown only now)")
        return EXIT_OK
    if command == "list":
        keys = await client.s3_key_list()
        if args.json:
            print(json.dumps([{"id": k.id, "name": k.name, "role": k.role, "created": _iso(k.created_ns)}
                              for k in keys]))
        else:
            table = [("ID", "NAME", "ROLE", "CREATED")] + [(k.id, k.name, k.role, _iso(k.created_ns))
                                                           for k in keys]
            widths = [max(len(row[i]) for row in table) for i in range(4)]
            print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                            for row in table))
        return EXIT_OK
    try:
        index = await client.s3_key_revoke(args.key_id)
    except NotFoundError as exc:
        raise S3CommandError(EXIT_REFUSED, str(exc)) from None
    if args.json:
        print(json.dumps({"id": args.key_id, "revoked": True, "index": index}))
    else:
        print(f"{args.key_id} revoked")
    return EXIT_OK
