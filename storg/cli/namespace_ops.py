"""storgctl's mv, cp and rm -r: one entry each, and nothing to import but the printing.

Kept apart from :mod:`storg.cli.tree` (put -r, get -r and watch, which need
the Twisted client) so that these three run on the blocking driver like
put and rm: a script that moves or copies a folder, or a benchmark of a
100,000-file ``mv``, pays for a tenth of a second of storgctl start-up,
not half a second.  The functions take either client
(:class:`~storg.client.blocking.BlockingClient` or
:class:`~storg.client.api.StorgClient`): the same coroutine methods.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from storg.cli.escape import escape_path

EXIT_OK = 0


def add_mv_parser(sub: Any) -> argparse.ArgumentParser:
    mv = sub.add_parser("mv", help="rename a file or a whole folder atomically")
    mv.add_argument("src", metavar="SRC")
    mv.add_argument("dst", metavar="DST")
    mv.add_argument("--force", action="store_true", help="replace files already at DST")
    return mv


def add_cp_parser(sub: Any) -> argparse.ArgumentParser:
    cp = sub.add_parser("cp", help="copy on the servers, sharing chunks (-r for a folder)")
    cp.add_argument("src", metavar="SRC")
    cp.add_argument("dst", metavar="DST")
    cp.add_argument("-r", "--recursive", action="store_true", help="copy a folder and everything below it")
    cp.add_argument("--force", action="store_true", help="replace files already at DST")
    return cp


async def run_mv(client: Any, args: argparse.Namespace) -> int:
    files = await client.mv(args.src, args.dst, force=args.force)
    if args.json:
        print(json.dumps({"src": args.src, "dst": args.dst, "files": files}))
    return EXIT_OK


async def run_cp(client: Any, args: argparse.Namespace) -> int:
    files = await client.cp(args.src, args.dst, recursive=args.recursive, force=args.force)
    if args.json:
        print(json.dumps({"src": args.src, "dst": args.dst, "files": files}))
    return EXIT_OK


async def run_rm_tree(client: Any, args: argparse.Namespace) -> int:
    """``rm -r PREFIX``: one entry; ``--dry-run`` lists what would go (a linearizable ls) instead."""
    if args.dry_run:
        files = await client.ls(args.remote)
        if args.json:
            print(json.dumps({"prefix": args.remote, "files": [f.path for f in files], "dry_run": True}))
        else:
            for f in files:
                print(escape_path(f.path))
        return EXIT_OK
    count = await client.rm_tree(args.remote)
    if args.json:
        print(json.dumps({"prefix": args.remote, "files": count}))
    return EXIT_OK
