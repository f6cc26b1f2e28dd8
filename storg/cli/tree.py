"""storgctl's tree commands: ``mv``, ``cp``, ``rm -r``, ``put -r``, ``get -r``.

mv, cp and rm -r are one request each (one log entry, see
:mod:`storg.fsm.tree`); put -r and get -r are many files over one client
(:mod:`storg.client.tree`), with one progress line for files and bytes on a
terminal, a warning per skipped entry, a ``--json`` summary, and the exit
status of the worst failure (refused 1 < local 2 < unavailable 3 <
integrity 4).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from storg.cli.escape import escape_path
from storg.cli.progress import ProgressBar, progress_for
from storg.client.api import StorgClient
from storg.client.tree import TreeReport, get_tree, put_tree
from storg.wire.tree import WATCH_DELETE, WATCH_KINDS, WatchEvent

EXIT_OK = 0


def add_watch_parser(sub: Any) -> None:
    watch = sub.add_parser("watch", help="one line per change under a folder, in commit order, with its index")
    watch.add_argument("prefix", metavar="PREFIX", nargs="?", default="/")
    watch.add_argument("--from", dest="start", type=int, default=0, metavar="INDEX",
                       help="start at this log index (default: from now); resume with the last index + 1")
    watch.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N events")


def event_dict(event: WatchEvent) -> dict[str, Any]:
    """The JSON object of a watch event (``watch --json``)."""
    out: dict[str, Any] = {"index": event.index, "kind": WATCH_KINDS.get(event.kind, str(event.kind)),
                           "path": event.path}
    if event.src:
        out["src"] = event.src
    if event.kind != WATCH_DELETE:
        out["size"] = event.size
        out["sha256"] = event.sha256
    return out


def format_event(event: WatchEvent) -> str:
    """``INDEX KIND PATH`` (a move adds ``<- SRC``), the path escaped as ls escapes it."""
    line = f"{event.index} {WATCH_KINDS.get(event.kind, str(event.kind))} {escape_path(event.path)}"
    return line + f" <- {escape_path(event.src)}" if event.src else line


async def run_watch(client: StorgClient, args: argparse.Namespace) -> int:
    def show(event: WatchEvent) -> None:
        print(json.dumps(event_dict(event)) if args.json else format_event(event), flush=True)

    await client.watch(args.prefix, show, start=args.start, limit=args.limit)
    return EXIT_OK


class TreeBar:
    """One progress line for a tree: ``put -r 12/100 files [###...] 1.2 MiB / 9.0 MiB``."""

    def __init__(self, verb: str, bar: ProgressBar) -> None:
        self.verb = verb
        self.bar = bar

    def __call__(self, files: int, total_files: int, done: int, total: int) -> None:
        self.bar.label = f"{self.verb} {files}/{total_files} files"
        self.bar(done, total)

    def finish(self) -> None:
        self.bar.finish()


async def run_put_tree(client: StorgClient, args: argparse.Namespace,
                       exit_for: Callable[[BaseException], int]) -> int:
    bar = _bar("put -r", sys.stderr)
    try:
        report = await put_tree(client, args.local, args.remote, jobs=args.jobs, progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    return _report(report, args, exit_for, sys.stderr)


async def run_get_tree(client: StorgClient, args: argparse.Namespace,
                       exit_for: Callable[[BaseException], int]) -> int:
    bar = _bar("get -r", sys.stderr)
    try:
        report = await get_tree(client, args.remote, args.local, jobs=args.jobs, stale=args.stale,
                                progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    return _report(report, args, exit_for, sys.stderr)


def _bar(verb: str, stream: TextIO) -> TreeBar | None:
    bar = progress_for(verb, stream)
    return None if bar is None else TreeBar(verb, bar)


def _report(report: TreeReport, args: argparse.Namespace, exit_for: Callable[[BaseException], int],
            err: TextIO) -> int:
    """Warnings and failures on stderr (one line each), the summary; the worst failure's exit status."""
    for path, why in report.skipped:
        err.write(f"storgctl: warning: skipped {escape_path(path)}: {why}\n")
    worst = EXIT_OK
    failures = []
    for path, exc in report.failed:
        code = exit_for(exc)
        worst = max(worst, code)
        message = " ".join(str(exc).split()) or type(exc).__name__
        err.write(f"storgctl: {escape_path(path)}: {message}\n")
        failures.append({"path": path, "error": message, "exit": code})
    if args.json:
        print(json.dumps({"files": report.files, "bytes": report.bytes,
                          "skipped": [{"path": p, "why": w} for p, w in report.skipped],
                          "failed": failures}))
    return worst
