"""``storgctl``: the command line over the client library.

Exit status (INTERFACE.md): 0 success; 1 refused; 2 usage or local error;
3 cluster unavailable; 4 integrity error.  Every error is one line on
stderr starting with ``storgctl: ``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from storg.client.api import STATUS_KEYS, ClusterUnavailable, StorgClient
from storg.client.connection import split_address

DEFAULT_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTEGRITY = 4


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line INTERFACE.md promises, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"storgctl: {message} (see storgctl --help)\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="storgctl", description="Drive a storg cluster.")
    p.add_argument("--cluster", default=None,
                   help="client addresses HOST:PORT[,HOST:PORT...] "
                        "(default: $STORG_CLUSTER, else " + DEFAULT_CLUSTER + ")")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for a leader or a quorum (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("status", help="one row per member: role, term, leader, indexes")
    return p


def cluster_addresses(option: str | None) -> list[str]:
    text = option or os.environ.get("STORG_CLUSTER") or DEFAULT_CLUSTER
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise CliError(EXIT_USAGE, "--cluster: no address given")
    for a in addresses:
        try:
            split_address(a)
        except ValueError as exc:
            raise CliError(EXIT_USAGE, f"--cluster: {exc}") from None
    return addresses


def format_status(rows: list[dict[str, Any]]) -> str:
    headers = ("ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST")
    table = [headers] + [
        tuple("-" if row[k] in (None, "") else str(row[k]) for k in STATUS_KEYS) for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


async def run_status(client: StorgClient, args: argparse.Namespace) -> int:
    rows = await client.status()
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_status(rows))
    return EXIT_OK


COMMANDS = {"status": run_status}


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    try:
        addresses = cluster_addresses(args.cluster)
        if args.timeout <= 0:
            raise CliError(EXIT_USAGE, "--timeout: must be positive")
    except CliError as exc:
        sys.stderr.write(f"storgctl: {exc}\n")
        sys.exit(exc.code)

    from twisted.internet import defer, task

    async def run(reactor: Any) -> None:
        client = StorgClient(addresses, reactor=reactor, timeout=args.timeout)
        try:
            code = await COMMANDS[args.command](client, args)
        except CliError as exc:
            sys.stderr.write(f"storgctl: {exc}\n")
            code = exc.code
        except ClusterUnavailable as exc:
            sys.stderr.write(f"storgctl: cluster unavailable: {exc}\n")
            code = EXIT_UNAVAILABLE
        finally:
            client.close()
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
