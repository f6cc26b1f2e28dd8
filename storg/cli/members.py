"""``storgctl member list|add|remove`` and ``storgctl leader transfer``.

Kept apart from the file commands: these talk about the cluster itself,
and their arguments (node ids, addresses) are checked here, before anything
is sent, so a typo is a usage error (exit 2) rather than a refusal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from storg.client.api import StorgClient
from storg.client.errors import NotFoundError
from storg.config import NODE_ID_RE, parse_address
from storg.wire.admin import MemberAddProgress, MemberInfo

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class MemberCommandError(Exception):
    """A refusal or usage error of a member command, with its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parsers(sub: Any) -> None:
    """Add the ``member`` and ``leader`` commands to storgctl's subparsers."""
    member = sub.add_parser("member", help="list, add or remove cluster members")
    msub = member.add_subparsers(dest="member_command", metavar="SUBCOMMAND",
                                 parser_class=type(member))
    msub.required = True
    msub.add_parser("list", help="id, role (voter or learner), peer and client address of each member")
    add = msub.add_parser("add", help="add a node: a learner first, a voter once it has caught up")
    add.add_argument("node_id", metavar="ID")
    add.add_argument("--peer", required=True, metavar="HOST:PORT", help="its peer_listen address")
    add.add_argument("--client", required=True, metavar="HOST:PORT", help="its client_listen address")
    add.add_argument("--learner", action="store_true", help="stop once it is a learner")
    remove = msub.add_parser("remove", help="remove a member (the leader hands over first)")
    remove.add_argument("node_id", metavar="ID")
    leader = sub.add_parser("leader", help="leadership")
    lsub = leader.add_subparsers(dest="leader_command", metavar="SUBCOMMAND",
                                 parser_class=type(leader))
    lsub.required = True
    transfer = lsub.add_parser("transfer", help="hand leadership to ID (or the most up-to-date follower)")
    transfer.add_argument("node_id", metavar="ID", nargs="?", default="")


def check_args(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) found before contacting the cluster."""
    node_id = getattr(args, "node_id", "")
    if node_id and not NODE_ID_RE.fullmatch(node_id):
        raise MemberCommandError(EXIT_USAGE, f"node id {node_id!r} is not 1-64 of [a-z0-9_-]")
    for option in ("peer", "client"):
        value = getattr(args, option, None)
        if value is not None:
            try:
                parse_address(value)
            except ValueError as exc:
                raise MemberCommandError(EXIT_USAGE, f"--{option}: {exc}") from None


def format_members(members: list[MemberInfo]) -> str:
    headers = ("ID", "ROLE", "PEER", "CLIENT")
    table = [headers] + [(m.id, m.role, m.peer or "-", m.client or "-") for m in members]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


class AddProgress:
    """``n4: learner, 1234/5678 entries`` lines on a terminal, at most one a second."""

    def __init__(self, stream: TextIO, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")

    def __call__(self, frame: MemberAddProgress) -> None:
        now = self.clock()
        if now - self._last < self.interval and frame.match < frame.last_index:
            return
        self._last = now
        self.stream.write(f"{self.line(frame)}\n")
        self.stream.flush()

    @staticmethod
    def line(frame: MemberAddProgress) -> str:
        if frame.match == 0 and frame.state == "probe":
            return (f"{frame.node_id}: learner, waiting for it to connect "
                    f"(0/{frame.last_index} entries)")
        return f"{frame.node_id}: learner, {frame.match}/{frame.last_index} entries"


def add_progress_for(stream: TextIO) -> AddProgress | None:
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError):
        is_tty = False
    return AddProgress(stream) if is_tty else None


async def run_member(client: StorgClient, args: argparse.Namespace) -> int:
    try:
        if args.member_command == "list":
            members = await client.members()
            if args.json:
                print(json.dumps([{"id": m.id, "role": m.role, "peer": m.peer, "client": m.client}
                                  for m in members]))
            else:
                print(format_members(members))
            return EXIT_OK
        if args.member_command == "add":
            done = await client.member_add(args.node_id, args.peer, args.client,
                                           learner=args.learner,
                                           progress=add_progress_for(sys.stderr))
        else:
            done = await client.member_remove(args.node_id)
    except NotFoundError as exc:
        raise MemberCommandError(EXIT_REFUSED, str(exc)) from None
    if args.json:
        print(json.dumps({"id": done.node_id, "role": done.role, "index": done.index}))
    elif done.role == "removed":
        print(f"{done.node_id} removed")
    else:
        print(f"{done.node_id} is a {done.role}")
    return EXIT_OK


async def run_leader(client: StorgClient, args: argparse.Namespace) -> int:
    try:
        done = await client.leader_transfer(args.node_id)
    except NotFoundError as exc:
        raise MemberCommandError(EXIT_REFUSED, str(exc)) from None
    if args.json:
        print(json.dumps({"leader": done.leader, "term": done.term}))
    else:
        print(f"{done.leader} is the leader (term {done.term})")
    return EXIT_OK
