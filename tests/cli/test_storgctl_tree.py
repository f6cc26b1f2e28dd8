"""storgctl mv, cp, rm -r, put -r/get -r, conditional puts and watch: arguments, output, exit statuses."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from storg.cli import tree as T
from storg.cli.main import EXIT_REFUSED, EXIT_USAGE, build_parser, exit_for, main
from storg.client.errors import (
    ClusterUnavailable,
    CompactedError,
    ConflictError,
    IntegrityError,
    LocalError,
    NotFoundError,
)
from storg.client.tree import TreeReport
from storg.wire.tree import WATCH_DELETE, WATCH_MOVE, WatchEvent


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--cluster", "127.0.0.1:9", *argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_the_parser_knows_the_tree_commands():
    p = build_parser()
    a = p.parse_args(["mv", "--force", "a", "b"])
    assert (a.command, a.src, a.dst, a.force) == ("mv", "a", "b", True)
    a = p.parse_args(["cp", "-r", "a", "b"])
    assert a.recursive and not a.force
    a = p.parse_args(["rm", "-r", "--dry-run", "a"])
    assert a.recursive and a.dry_run
    a = p.parse_args(["put", "--if-match", "ab" * 32, "f", "/x"])
    assert a.if_match == "ab" * 32 and not a.if_absent
    a = p.parse_args(["put", "-r", "--jobs", "4", "dir", "/x"])
    assert a.recursive and a.jobs == 4
    a = p.parse_args(["watch", "/p", "--from", "17", "--limit", "3"])
    assert (a.prefix, a.start, a.limit) == ("/p", 17, 3)
    assert p.parse_args(["watch"]).prefix == "/"


@pytest.mark.parametrize("argv", [
    ["mv", "/a", "/a"], ["mv", "/a", "/a/b"], ["cp", "-r", "/a", "/a/b/c"], ["mv", "/a/../b", "/c"],
    ["rm", "--dry-run", "/a"], ["put", "--if-match", "nothex", "-", "/a"],
    ["put", "--if-absent", "--if-match", "ab" * 32, "-", "/a"], ["put", "-r", "/nonexistent-dir", "/a"],
    ["get", "-r", "/a"], ["watch", "--from", "-1"], ["watch", "--limit", "0"], ["put", "-r", "--jobs", "0", ".", "/a"],
])
def test_bad_tree_arguments_exit_2_before_contacting_the_cluster(argv, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == EXIT_USAGE, err
    assert err.startswith("storgctl: ") and err.count("\n") == 1 and out == ""


def test_put_r_with_a_condition_is_refused(tmp_path, capsys):
    code, _, err = run_main(["put", "-r", "--if-absent", str(tmp_path), "/a"], capsys)
    assert code == EXIT_USAGE and "single file" in err


def test_conflicts_and_compaction_exit_1_with_the_reason():
    args = argparse.Namespace(src="/a")
    code, message = exit_for(ConflictError("/b: /b already exists (--force replaces it)"), args)
    assert code == EXIT_REFUSED and "--force" in message
    code, message = exit_for(CompactedError("index 3 is compacted away; list / and watch --from 9"), args)
    assert code == EXIT_REFUSED and "--from 9" in message
    assert exit_for(NotFoundError("x"), args) == (EXIT_REFUSED, "/a: not found")


def test_a_tree_report_exits_with_the_worst_failure(capsys):
    report = TreeReport(files=3, bytes=30, skipped=[("/l/link", "a symlink")],
                        failed=[("a", NotFoundError("gone")), ("b", IntegrityError("bad")),
                                ("c", LocalError("no space"))])

    def code_of(exc):
        return exit_for(exc, argparse.Namespace())[0]

    args = argparse.Namespace(json=True)
    err = io.StringIO()
    assert T._report(report, args, code_of, err) == 4
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 3 and summary["bytes"] == 30
    assert [f["exit"] for f in summary["failed"]] == [1, 4, 2]
    assert summary["skipped"] == [{"path": "/l/link", "why": "a symlink"}]
    lines = err.getvalue().splitlines()
    assert lines[0] == "storgctl: warning: skipped /l/link: a symlink"
    assert all(line.startswith("storgctl: ") for line in lines)
    only = TreeReport(files=1, failed=[("x", ClusterUnavailable("no leader"))])
    assert T._report(only, argparse.Namespace(json=False), code_of, io.StringIO()) == 3
    assert T._report(TreeReport(files=5), argparse.Namespace(json=False), code_of, io.StringIO()) == 0


def test_watch_lines_and_json():
    move = WatchEvent(1, 42, WATCH_MOVE, "/new/a", "/old/a", 5, "ab" * 32)
    assert T.format_event(move) == "42 move /new/a <- /old/a"
    assert T.event_dict(move) == {"index": 42, "kind": "move", "path": "/new/a", "src": "/old/a",
                                  "size": 5, "sha256": "ab" * 32}
    gone = WatchEvent(1, 43, WATCH_DELETE, "/x\nforged")
    assert T.format_event(gone) == "43 delete /x\\nforged"
    assert T.event_dict(gone) == {"index": 43, "kind": "delete", "path": "/x\nforged"}


def test_the_tree_progress_line_counts_files_and_bytes():
    from storg.cli.progress import ProgressBar

    stream = io.StringIO()
    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    bar = T.TreeBar("put -r", ProgressBar("put -r", stream, clock=lambda: next(ticks), interval=0))
    bar(0, 4, 0, 4096)
    bar(4, 4, 4096, 4096)
    bar.finish()
    drawn = stream.getvalue().split("\r")
    assert "put -r 0/4 files" in drawn[1]
    assert "put -r 4/4 files" in drawn[-1] and "100%" in drawn[-1] and "4.0 KiB / 4.0 KiB" in drawn[-1]
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
