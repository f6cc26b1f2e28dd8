"""``storgctl``: the command line over the client library.

Exit status (README.rst, section "Exit status"): 0 success; 1 refused; 2 usage or local error;
3 cluster unavailable or disk full; 4 integrity error.  Every error is one line on
stderr starting with ``storgctl: ``.

Two drivers run the commands.  The ones a script loops over (:data:`FAST_COMMANDS`:
``status``, ``put`` and ``get`` of one file, ``ls``, ``stat``, ``rm`` (``-r`` too),
``mv`` and ``cp``) run on the blocking-socket client (:mod:`storg.client.blocking`),
which never imports Twisted, cryptography or pyOpenSSL, so such a storgctl starts in
tens of milliseconds; for them the argument parser is built without the other commands'
modules.  Every other command (and ``put -r``, ``get -r``) runs on the Twisted client
(:class:`storg.client.api.StorgClient`).  The
command functions are coroutines written once for both: the blocking client's methods
never suspend.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn, cast

from storg.cli.escape import escape_controls, escape_path
from storg.cli.progress import progress_for
from storg.client.errors import (
    BadRequest,
    ClusterUnavailable,
    CompactedError,
    ConflictError,
    DiskFull,
    IntegrityError,
    LimitExceeded,
    LocalError,
    NotFoundError,
    PermissionDenied,
    ServerError,
)
from storg.client.localfile import AtomicFile
from storg.net.errors import TLSRefused
from storg.net.protocol import STATUS_KEYS, split_address
from storg.paths import InvalidPath, normalize_path, normalize_prefix

if TYPE_CHECKING:
    from storg.client.api import StorgClient
    from storg.wire.files import FileInfo

DEFAULT_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTEGRITY = 4
EXIT_INTERRUPTED = 130  # the shell's convention for a command stopped by SIGINT


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line README.rst promises ("Exit status"), exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"storgctl: {message} (see storgctl --help)\n")
        sys.exit(EXIT_USAGE)


FAST_COMMANDS = ("status", "put", "get", "ls", "stat", "rm", "mv", "cp")
"""Commands run on the blocking client when given one file (not ``-r``); see the module docstring."""

_VALUE_OPTIONS = ("--cluster", "--timeout", "--ca", "--cert", "--key")
_FLAG_OPTIONS = ("--json",)


def command_of(argv: list[str]) -> str | None:
    """The command word of a storgctl command line, or None when it cannot be told for sure.

    Reads the global options as argparse would (``--opt VALUE``,
    ``--opt=VALUE``, unique prefixes); anything else before the command
    (``--help``, an unknown or ambiguous option) gives None, and the full
    parser then reports it exactly as before.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not word.startswith("--"):
            return None if word.startswith("-") and word != "-" else word
        name, has_value, _ = word.partition("=")
        known = [o for o in _VALUE_OPTIONS + _FLAG_OPTIONS if o == name] or \
            [o for o in _VALUE_OPTIONS + _FLAG_OPTIONS if o.startswith(name)]
        if len(known) != 1:
            return None
        i += 1 if has_value or known[0] in _FLAG_OPTIONS else 2
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse with the full parser, or for a fast command with that command's parser alone
    (the same definitions: only the other commands' are not built, nor their modules imported)."""
    words = sys.argv[1:] if argv is None else argv
    command = command_of(words)
    return build_parser(only=command if command in FAST_COMMANDS else None).parse_args(argv)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """storgctl's parser; ``only`` (one of :data:`FAST_COMMANDS`): with that command alone.

    The definitions are the same either way; the one-command parser spares
    a short-lived storgctl building (and importing) all the others.
    """
    p = _Parser(prog="storgctl", description="Drive a storg cluster.")
    p.add_argument("--cluster", default=None,
                   help="client addresses HOST:PORT[,HOST:PORT...] "
                        "(default: $STORG_CLUSTER, else " + DEFAULT_CLUSTER + ")")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for a leader or a quorum (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--ca", default=None, metavar="FILE",
                   help="TLS: the CA that signed the nodes' certificates (default: $STORG_CA)")
    p.add_argument("--cert", default=None, metavar="FILE",
                   help="TLS: our client certificate, naming a user and role (default: $STORG_CERT)")
    p.add_argument("--key", default=None, metavar="FILE", help="TLS: its private key (default: $STORG_KEY)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def wanted(name: str) -> bool:
        return only is None or name == only

    made: dict[str, argparse.ArgumentParser] = {}
    if wanted("status"):
        made["status"] = sub.add_parser("status", help="one row per member: role, term, leader, indexes")
    if only is None:
        scrub = sub.add_parser("scrub", help="each member's scrub and repair counters")
        scrub.add_argument("--start", action="store_true", help="start a scrub pass on every member now")
    if wanted("put"):
        put = made["put"] = sub.add_parser("put", help="store a local file (LOCAL '-' reads stdin; -r a folder)")
        put.add_argument("local", metavar="LOCAL")
        put.add_argument("remote", metavar="REMOTE")
        put.add_argument("-r", "--recursive", action="store_true",
                         help="LOCAL is a folder: store every regular file below it under the folder REMOTE")
        condition = put.add_mutually_exclusive_group()
        condition.add_argument("--if-absent", action="store_true",
                               help="only if no file is at REMOTE (exit 1 otherwise)")
        condition.add_argument("--if-match", metavar="SHA256", default="",
                               help="only if the file at REMOTE has this SHA-256 (exit 1 otherwise)")
    if wanted("get"):
        get = made["get"] = sub.add_parser("get", help="fetch a file to LOCAL (omitted or '-': stdout; -r a folder)")
        get.add_argument("remote", metavar="REMOTE")
        get.add_argument("local", metavar="LOCAL", nargs="?", default="-")
        get.add_argument("-r", "--recursive", action="store_true",
                         help="REMOTE is a folder: fetch every file below it into the local folder LOCAL")
    for name in ("put", "get"):
        if name in made:
            made[name].add_argument("--jobs", type=int, default=16, metavar="N",
                                    help="with -r: files in flight at once (default 16)")
    if wanted("ls"):
        ls = made["ls"] = sub.add_parser("ls", help="list the files at or below a folder")
        ls.add_argument("prefix", metavar="PREFIX", nargs="?", default="/")
    if wanted("stat"):
        stat = made["stat"] = sub.add_parser("stat", help="a file's metadata and chunks")
        stat.add_argument("remote", metavar="REMOTE")
    if wanted("rm"):
        rm = made["rm"] = sub.add_parser("rm", help="delete a file (-r: a folder and everything below it)")
        rm.add_argument("remote", metavar="REMOTE")
        rm.add_argument("-r", "--recursive", action="store_true",
                        help="REMOTE is a folder: delete it and everything below it, in one step")
        rm.add_argument("--dry-run", action="store_true",
                        help="with -r: list what would be deleted, delete nothing")
    if wanted("mv") or wanted("cp"):
        from storg.cli import namespace_ops
        if wanted("mv"):
            namespace_ops.add_mv_parser(sub)
        if wanted("cp"):
            namespace_ops.add_cp_parser(sub)
    if only is None:
        from storg.cli import tree as tree_commands
        tree_commands.add_watch_parser(sub)
    for name in ("get", "ls", "stat"):
        if name in made:
            made[name].add_argument("--stale", action="store_true",
                                    help="read from the node contacted without checking it is current")
    if only is None:
        from storg.cli import certs as certs_commands
        from storg.cli import keys as key_commands
        from storg.cli import members as member_commands
        from storg.cli import s3keys as s3_commands
        member_commands.add_parsers(sub)
        certs_commands.add_parsers(sub)
        key_commands.add_parsers(sub)
        s3_commands.add_parsers(sub)
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


def print_json(value: Any) -> None:
    """``--json`` output: one line of JSON on stdout.

    json is imported here, not with the module: most storgctl runs print
    no JSON, and they start faster without it.
    """
    import json

    print(json.dumps(value))


def format_status(rows: list[dict[str, Any]]) -> str:
    headers = ("ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST")
    table = [headers] + [
        tuple("-" if row[k] in (None, "") else str(row[k]) for k in STATUS_KEYS) for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def status_summary(rows: list[dict[str, Any]]) -> str:
    """The first line of ``storgctl status``: healthy / degraded / unavailable, and how many
    more voters may stop with a quorum left (the status page's rule, from the rows alone).

    A member that does not answer counts as a voter: storgctl cannot tell, and
    counting it makes the tolerance an underestimate, never an overestimate.
    """
    voters = [r for r in rows if r.get("role") != "learner"]
    reachable = [r for r in voters if r.get("role") != "unreachable"]
    leaders = sorted({r["id"] for r in reachable if r.get("role") == "leader"})
    quorum = len(voters) // 2 + 1
    counted = f"{len(reachable)} of {len(voters)} voters reachable"
    if len(leaders) != 1 or len(reachable) < quorum:
        return f"cluster unavailable: no leader agreed on ({counted}, quorum {quorum})"
    health = "healthy" if len(reachable) == len(voters) else "degraded"
    more = len(reachable) - quorum
    return f"cluster {health}: {counted}, leader {leaders[0]}, can lose {more} more"


async def run_status(client: StorgClient, args: argparse.Namespace) -> int:
    rows = await client.status()
    if args.json:
        print_json(rows)
    else:
        print(status_summary(rows))
        print(format_status(rows))
    return EXIT_OK


SCRUB_COLUMNS = (("ID", "id"), ("SCRUBBING", "scrubbing"), ("PASSES", "passes"),
                 ("CHECKED", "chunks_checked"), ("BAD", "bad_copies"), ("MISSING", "missing_copies"),
                 ("REPAIRED", "repairs_done"), ("UNDER_REPLICATED", "under_replicated"),
                 ("COLLECTED", "chunks_collected"), ("ORPHANS", "orphans_removed"))


async def run_scrub(client: StorgClient, args: argparse.Namespace) -> int:
    """One row per member: chunks checked, bad and missing copies, repairs, under-replicated chunks."""
    rows = await client.scrub(start=args.start)
    if args.json:
        print_json(rows)
        return EXIT_OK
    table = [tuple(h for h, _ in SCRUB_COLUMNS)] + [
        tuple("-" if row.get(k) is None else str(row[k]).lower() for _, k in SCRUB_COLUMNS)
        for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(SCRUB_COLUMNS))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table))
    return EXIT_OK


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC to the second, ending in ``Z``."""
    # time.gmtime, not datetime: the same text, without datetime's import in every storgctl.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


def file_dict(info: FileInfo, *, chunks: bool = False) -> dict[str, Any]:
    """The JSON object of a file (``ls --json`` rows; ``stat --json`` adds its chunks)."""
    out: dict[str, Any] = {"path": info.path, "size": info.size, "sha256": info.sha256,
                           "modified": iso_time(info.modified_ns), "version": info.version}
    attrs = info.attrs
    if attrs.etag:
        out["etag"] = attrs.etag
    if attrs.content_type:
        out["content_type"] = attrs.content_type
    if attrs.parts:
        out["parts"] = list(attrs.parts)
    if chunks:
        out["chunks"] = [{"hash": c.hash, "size": c.size, "holders": list(c.holders)}
                         for c in info.chunks]
    return out


def format_ls(files: list[FileInfo]) -> str:
    """One line per file: size (right-aligned), modified time, path.

    The path is escaped (:func:`storg.cli.escape.escape_path`): a name with a
    newline or an escape sequence must not forge lines or drive the terminal.
    """
    if not files:
        return ""
    width = max(len(str(f.size)) for f in files)
    return "\n".join(f"{f.size:>{width}}  {iso_time(f.modified_ns)}  {escape_path(f.path)}"
                     for f in files)


def format_stat(info: FileInfo) -> str:
    sha = info.sha256 + (f" (composite of {len(info.attrs.parts)} parts)" if info.attrs.parts else "")
    lines = [f"path:      {escape_path(info.path)}", f"size:      {info.size}", f"sha256:    {sha}",
             f"modified:  {iso_time(info.modified_ns)}", f"version:   {info.version}"]
    if info.attrs.etag:
        lines.append(f"etag:      {escape_controls(info.attrs.etag)}")
    if info.attrs.content_type:
        lines.append(f"type:      {escape_controls(info.attrs.content_type)}")
    lines.append(f"chunks:    {len(info.chunks)}")
    lines += [f"  {c.hash}  {c.size}  {','.join(c.holders) or '-'}" for c in info.chunks]
    return "\n".join(lines)


def remote_path(text: str) -> str:
    """The normal form of a REMOTE argument; a usage error (exit 2) before anything is sent."""
    try:
        return normalize_path(text)
    except InvalidPath as exc:
        raise CliError(EXIT_USAGE, f"invalid path: {exc}") from None


def remote_prefix(text: str) -> str:
    try:
        return normalize_prefix(text)
    except InvalidPath as exc:
        raise CliError(EXIT_USAGE, f"invalid prefix: {exc}") from None


_PENDING_FILES: list[AtomicFile] = []
"""Temporary files of gets in progress, removed however storgctl ends (Ctrl-C included)."""


def prepare(args: argparse.Namespace) -> None:
    """Check every argument and open the local files before anything is sent.

    Bad paths and unreadable or unwritable local files are usage errors
    (exit 2) found without contacting the cluster.  Remote paths are
    replaced by their normal form; ``args.source`` (put) and ``args.atomic``
    (get to a file) are set.
    """
    if args.command in ("member", "leader"):
        from storg.cli import members as member_commands
        member_commands.check_args(args)
    if args.command == "s3":
        from storg.cli import s3keys as s3_commands
        s3_commands.check_args(args)
    recursive = getattr(args, "recursive", False)
    if args.command in ("rm", "get", "put") and recursive:
        args.remote = remote_prefix(args.remote)
    elif hasattr(args, "remote"):
        args.remote = remote_path(args.remote)
    if hasattr(args, "prefix"):
        args.prefix = remote_prefix(args.prefix)
    if args.command in ("mv", "cp"):
        args.src, args.dst = remote_path(args.src), remote_path(args.dst)
        if args.dst == args.src or args.dst.startswith(args.src + "/"):
            raise CliError(EXIT_USAGE, f"cannot {args.command} {args.src} to {args.dst}: "
                                       f"the destination is {args.src} or inside it")
    if args.command == "watch" and (args.start < 0 or (args.limit is not None and args.limit < 1)):
        raise CliError(EXIT_USAGE, "--from must be 0 or more and --limit 1 or more")
    if args.command == "rm" and args.dry_run and not recursive:
        raise CliError(EXIT_USAGE, "--dry-run goes with -r")
    if args.command in ("put", "get") and args.jobs < 1:
        raise CliError(EXIT_USAGE, "--jobs: must be at least 1")
    if args.command == "put" and args.if_match:
        match = args.if_match.lower()
        if len(match) != 64 or any(c not in "0123456789abcdef" for c in match):
            raise CliError(EXIT_USAGE, f"--if-match: {args.if_match!r} is not a SHA-256 (64 hex digits)")
        args.if_match = match
    if args.command == "put" and recursive:
        if args.if_absent or args.if_match:
            raise CliError(EXIT_USAGE, "--if-absent and --if-match go with a single file, not -r")
        if not os.path.isdir(args.local):
            raise CliError(EXIT_USAGE, f"put -r: {args.local} is not a folder")
    elif args.command == "put":
        if args.local == "-":
            args.source = sys.stdin.buffer
        elif os.path.isdir(args.local):
            raise CliError(EXIT_USAGE, f"cannot read {args.local}: is a directory")
        else:
            try:
                args.source = open(args.local, "rb")
            except OSError as exc:
                raise CliError(EXIT_USAGE, f"cannot read {args.local}: {exc.strerror or exc}") from None
    if args.command == "get" and recursive:
        if args.local == "-":
            raise CliError(EXIT_USAGE, "get -r needs a local folder")
        if os.path.exists(args.local) and not os.path.isdir(args.local):
            raise CliError(EXIT_USAGE, f"get -r: {args.local} is not a folder")
    elif args.command == "get":
        args.atomic = None
        if args.local != "-":
            target = args.local
            if os.path.isdir(target):
                target = os.path.join(target, args.remote.rsplit("/", 1)[-1])
            args.atomic = AtomicFile(target)
            _PENDING_FILES.append(args.atomic)


def _exit_code(exc: BaseException) -> int:
    """The exit status for one file's failure in a tree (unexpected errors count as refused)."""
    known = exit_for(exc, argparse.Namespace())
    return EXIT_REFUSED if known is None else known[0]


async def run_put(client: StorgClient, args: argparse.Namespace) -> int:
    if args.recursive:
        from storg.cli import tree as tree_commands
        return await tree_commands.run_put_tree(client, args, _exit_code)
    bar = progress_for(f"put {args.remote}", sys.stderr)
    try:
        info = await client.put(args.source, args.remote, progress=bar, if_absent=args.if_absent,
                                if_match=args.if_match)
    finally:
        if bar is not None:
            bar.finish()
    if args.json:
        print_json(file_dict(info))
    return EXIT_OK


async def run_get(client: StorgClient, args: argparse.Namespace) -> int:
    if args.recursive:
        from storg.cli import tree as tree_commands
        return await tree_commands.run_get_tree(client, args, _exit_code)
    bar = progress_for(f"get {args.remote}", sys.stderr)
    atomic: AtomicFile | None = args.atomic
    try:
        sink = sys.stdout.buffer if atomic is None else atomic.f
        await client.get(args.remote, sink, stale=args.stale, progress=bar)
        if atomic is not None:
            atomic.commit()
    finally:
        if atomic is not None:
            atomic.discard()
        if bar is not None:
            bar.finish()
    return EXIT_OK


async def run_ls(client: StorgClient, args: argparse.Namespace) -> int:
    files = await client.ls(args.prefix, stale=args.stale)
    if args.json:
        print_json([file_dict(f) for f in files])
    elif files:
        print(format_ls(files))
    return EXIT_OK


async def run_stat(client: StorgClient, args: argparse.Namespace) -> int:
    info = await client.stat(args.remote, stale=args.stale)
    if args.json:
        print_json(file_dict(info, chunks=True))
    else:
        print(format_stat(info))
    return EXIT_OK


async def run_rm(client: StorgClient, args: argparse.Namespace) -> int:
    if args.recursive:
        from storg.cli import namespace_ops
        return await namespace_ops.run_rm_tree(client, args)
    version = await client.rm(args.remote)
    if args.json:
        print_json({"path": args.remote, "version": version})
    return EXIT_OK


async def run_mv(client: StorgClient, args: argparse.Namespace) -> int:
    from storg.cli import namespace_ops
    return await namespace_ops.run_mv(client, args)


async def run_cp(client: StorgClient, args: argparse.Namespace) -> int:
    from storg.cli import namespace_ops
    return await namespace_ops.run_cp(client, args)


FILE_COMMANDS = {"status": run_status, "put": run_put, "get": run_get, "ls": run_ls,
                 "stat": run_stat, "rm": run_rm, "mv": run_mv, "cp": run_cp}


def commands() -> dict[str, Any]:
    """Every command's function (importing the modules of those beyond :data:`FILE_COMMANDS`)."""
    from storg.cli import keys as key_commands
    from storg.cli import members as member_commands
    from storg.cli import s3keys as s3_commands
    from storg.cli import tree as tree_commands
    return FILE_COMMANDS | {
        "scrub": run_scrub, "keys": key_commands.run_reencrypt,
        "watch": tree_commands.run_watch,
        "member": member_commands.run_member, "leader": member_commands.run_leader,
        "s3": s3_commands.run_s3}


def one_line(text: str) -> str:
    """Errors are one line on stderr, whatever a server put in its message.

    Whitespace runs become one space; other control characters (a path in
    the message, or a hostile server's text) are escaped, not sent to the terminal.
    """
    return escape_controls(" ".join(str(text).split()))


def exit_for(exc: BaseException, args: argparse.Namespace) -> tuple[int, str] | None:
    """The exit status and message for an error, or None if it is not an expected one."""
    subject = getattr(args, "remote", None) or getattr(args, "prefix", None) or getattr(args, "src", None) or ""
    if isinstance(exc, ConflictError):
        return EXIT_REFUSED, f"refused: {exc}"
    if isinstance(exc, CompactedError):
        return EXIT_REFUSED, f"{exc}"
    if isinstance(exc, CliError) or _is_member_error(exc):
        return getattr(exc, "code", EXIT_USAGE), str(exc)
    if isinstance(exc, InvalidPath):
        return EXIT_USAGE, f"invalid path: {exc}"
    if isinstance(exc, LocalError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, TLSRefused):
        return EXIT_USAGE, f"every node refused TLS with us: {exc}"
    if isinstance(exc, ClusterUnavailable):
        return EXIT_UNAVAILABLE, f"cluster unavailable: {exc}"
    if isinstance(exc, NotFoundError):
        return EXIT_REFUSED, f"{subject}: not found" if subject else f"not found: {exc}"
    if isinstance(exc, BadRequest):
        return EXIT_USAGE, f"refused by the cluster: {exc}"
    if isinstance(exc, IntegrityError):
        return EXIT_INTEGRITY, f"integrity error: {exc}"
    if isinstance(exc, PermissionDenied):
        return EXIT_REFUSED, f"permission denied: {exc}"
    if isinstance(exc, DiskFull):
        return EXIT_UNAVAILABLE, f"disk full: {exc}"
    if isinstance(exc, LimitExceeded):
        return EXIT_REFUSED, f"limit exceeded: {exc}"
    if isinstance(exc, ServerError):
        return EXIT_REFUSED, f"refused by the cluster: {exc}"
    return None


def _is_member_error(exc: BaseException) -> bool:
    """A MemberCommandError or an S3CommandError (only possible once their modules were imported)."""
    members = sys.modules.get("storg.cli.members")
    s3keys = sys.modules.get("storg.cli.s3keys")
    return (members is not None and isinstance(exc, members.MemberCommandError)) or \
        (s3keys is not None and isinstance(exc, s3keys.S3CommandError))


def runs_blocking(args: argparse.Namespace) -> bool:
    """Whether this command runs on the blocking client (see the module docstring)."""
    # put -r and get -r move many files through the Twisted client; rm -r and cp -r are one entry.
    return args.command in FAST_COMMANDS and not (args.command in ("put", "get") and args.recursive)


def client_credentials(args: argparse.Namespace) -> Any:
    """The TLS material of ``--ca/--cert/--key`` or ``STORG_CA/CERT/KEY`` (None: plain TCP); exit 2 if unusable.

    For the blocking client a :class:`storg.client.blocking.BlockingTLS`
    (the standard library's ssl), else a :class:`storg.net.credentials.TLSCredentials`.
    """
    from storg.net.tls_files import TLSConfigError, tls_files
    try:
        if runs_blocking(args):
            files = tls_files(os.environ, args.ca, args.cert, args.key)
            if files is None:
                return None
            from storg.client.blocking import BlockingTLS
            return BlockingTLS(*files)
        from storg.net.credentials import credentials_from_env
        return credentials_from_env(os.environ, args.ca, args.cert, args.key)
    except (TLSConfigError, ValueError) as exc:
        raise CliError(EXIT_USAGE, f"TLS: {exc}") from None


def report(exc: Exception, args: argparse.Namespace, credentials: Any) -> int:
    """Write an expected error's line on stderr and return its exit status; re-raise anything else."""
    known = exit_for(exc, args)
    if known is None:
        raise exc
    code, message = known
    if code == EXIT_UNAVAILABLE and credentials is None and isinstance(exc, ClusterUnavailable):
        message += " (if the cluster uses TLS: --ca, --cert and --key, or STORG_CA, STORG_CERT, STORG_KEY)"
    sys.stderr.write(f"storgctl: {one_line(message)}\n")
    return code


def run_blocking(args: argparse.Namespace, addresses: list[str], credentials: Any) -> NoReturn:
    """Run a fast command on the blocking client: no reactor, no Twisted (see the module docstring)."""
    import signal

    from storg.client.blocking import BlockingClient, run_now

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # as the reactor would: "interrupted", temporary files removed
    client = BlockingClient(addresses, timeout=args.timeout, tls=credentials)
    try:
        code = run_now(FILE_COMMANDS[args.command](cast(Any, client), args))  # the same methods
    except KeyboardInterrupt:
        sys.stderr.write("storgctl: interrupted\n")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        code = report(exc, args, credentials)
    finally:
        client.close()
        for atomic in _PENDING_FILES:
            atomic.discard()
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    if args.command == "certs":
        # Local only: no cluster, no reactor.
        from storg.cli import certs as certs_commands
        try:
            sys.exit(certs_commands.run_certs(args))
        except certs_commands.CertsError as exc:
            sys.stderr.write(f"storgctl: {one_line(str(exc))}\n")
            sys.exit(EXIT_USAGE)
    if args.command == "keys" and args.keys_command != "reencrypt":
        from storg.cli import keys as key_commands
        try:
            sys.exit(key_commands.run_keys(args))
        except key_commands.KeyFileError as exc:
            sys.stderr.write(f"storgctl: {one_line(str(exc))}\n")
            sys.exit(EXIT_USAGE)
    try:
        addresses = cluster_addresses(args.cluster)
        if args.timeout <= 0:
            raise CliError(EXIT_USAGE, "--timeout: must be positive")
        prepare(args)
        credentials = client_credentials(args)
    except Exception as exc:
        if not isinstance(exc, (CliError, LocalError)) and not _is_member_error(exc):
            raise
        known = exit_for(exc, args)
        assert known is not None
        sys.stderr.write(f"storgctl: {one_line(known[1])}\n")
        sys.exit(known[0])
    if runs_blocking(args):
        run_blocking(args, addresses, credentials)

    from twisted.internet import defer, task

    from storg.client.api import StorgClient

    table = commands()

    finished = []

    async def run(reactor: Any) -> None:
        client = StorgClient(addresses, reactor=reactor, timeout=args.timeout, tls=credentials)
        try:
            code = await table[args.command](client, args)
            finished.append(code)
        except Exception as exc:
            code = report(exc, args, credentials)
            finished.append(code)
        finally:
            client.close()
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit as exc:
        if exc.code == 0 and not finished:
            # The reactor stopped on SIGINT or SIGTERM before the command ended.
            sys.stderr.write("storgctl: interrupted\n")
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise
    finally:
        for atomic in _PENDING_FILES:
            atomic.discard()


if __name__ == "__main__":
    main()
