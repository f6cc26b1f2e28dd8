"""``storgctl keys init FILE``, ``keys rotate FILE``, ``keys list FILE``, ``keys remove FILE ID``.

The cluster key file (encryption at rest) is made and changed locally, on
the operator's machine, then copied to every node (mode 0600): like
``certs``, nothing is sent to a cluster.  A thin layer over
:mod:`storg.storage.keys`, which says what the file holds.  ``rotate``
adds a key and makes it active; nodes use it for new writes once restarted
with the new file.  ``remove`` drops an inactive key: only once no record
names it any more (after the re-encryption pass), else a node refuses to
start with "key id X not in key file F".  Every problem is exit 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from storg.storage.keys import KeyFileError, init_key_file, load_key_file, remove_key, rotate_key_file

EXIT_OK = 0


def add_parsers(sub: Any) -> None:
    """Add the ``keys`` command to storgctl's subparsers."""
    keys = sub.add_parser("keys", help="make and rotate the cluster key file (encryption at rest)")
    ksub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=type(keys))
    ksub.required = True
    for name, text in (("init", "create a new key file (mode 0600): a cluster secret and key 1"),
                       ("rotate", "add a new key to FILE and make it the active one"),
                       ("list", "the key ids in FILE and which one is active (never the keys)")):
        p = ksub.add_parser(name, help=text)
        p.add_argument("file", metavar="FILE")
    rm = ksub.add_parser("remove", help="drop an inactive key, once no record is sealed with it")
    rm.add_argument("file", metavar="FILE")
    rm.add_argument("key_id", metavar="ID", type=int)
    ksub.add_parser("reencrypt", help="(admin) run a scrub pass on every member, which reseals every "
                                      "record under the active key; waits for it to end everywhere")


def run_keys(args: argparse.Namespace) -> int:
    """Do the command and print what the file now holds; KeyFileError (exit 2) for any problem."""
    if args.keys_command == "init":
        ring = init_key_file(args.file)
    elif args.keys_command == "rotate":
        ring = rotate_key_file(args.file)
    elif args.keys_command == "remove":
        ring = remove_key(args.file, args.key_id)
    elif args.keys_command == "list":
        ring = load_key_file(args.file)
    else:  # pragma: no cover - argparse allows no other
        raise KeyFileError(f"unknown keys command {args.keys_command!r}")
    ids = sorted(ring.keys)
    if args.json:
        print(json.dumps({"file": str(ring.path), "keys": ids, "active": ring.active}))
    else:
        print(f"{ring.path}: keys {', '.join(map(str, ids))}; active {ring.active}")
    return EXIT_OK


async def run_reencrypt(client: Any, args: argparse.Namespace) -> int:
    """Start the pass on every member and wait until each has finished one (exit 3 if one is down).

    Every member must have restarted with the rotated key file first, or it
    would reseal under its old active key.  Paced like scrub
    (``files.scrub_rate_mb_s``).
    """
    from twisted.internet import task

    from storg.client.errors import ClusterUnavailable

    before = {row["id"]: row.get("passes") for row in await client.scrub(start=True)}
    missing = sorted(nid for nid, passes in before.items() if passes is None)
    if missing:
        raise ClusterUnavailable(f"members {', '.join(missing)} did not answer; the pass must run on every one")
    while True:
        rows = await client.scrub(start=False)
        done = {row["id"] for row in rows
                if row.get("passes") is not None and row["passes"] > (before.get(row["id"]) or 0)
                and not row.get("scrubbing")}
        if done >= set(before):
            break
        await task.deferLater(client.reactor, 0.5, lambda: None)
    result = [{"id": row["id"], "chunks_checked": row.get("chunks_checked")} for row in rows]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"re-encryption pass done on {', '.join(sorted(done))}: every record is sealed under the "
              "active key; older keys may now be removed (storgctl keys remove FILE ID)")
    return EXIT_OK


__all__ = ["KeyFileError", "add_parsers", "run_keys", "run_reencrypt"]
