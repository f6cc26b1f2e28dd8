"""storgctl's file commands without a cluster: arguments, checks made before sending, output, exits."""

from __future__ import annotations

import argparse
import io
import json
import os

import pytest

from storg.cli.main import (
    EXIT_INTEGRITY,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_parser,
    exit_for,
    file_dict,
    format_ls,
    format_stat,
    iso_time,
    main,
    one_line,
)
from storg.cli.progress import ProgressBar, human_bytes, progress_for
from storg.client.errors import (
    BadRequest,
    ClusterUnavailable,
    DiskFull,
    IntegrityError,
    LocalError,
    NotFoundError,
    ServerError,
)
from storg.paths import InvalidPath
from storg.wire.files import ChunkRef, FileInfo
from storg.wire.objects import ObjectAttrs
from storg.wire.record import replace as replace_record

NS = 1_700_000_000_987_654_321  # 2023-11-14T22:13:20.987Z

INFO = FileInfo("/docs/a.txt", 1234, "ab" * 32, NS, 7,
                (ChunkRef("cd" * 32, 1000, ("n1", "n2", "n3")), ChunkRef("ef" * 32, 234, ("n2",))))


def run_main(argv, capsys):
    """Run storgctl in-process for commands that must fail before the reactor starts."""
    with pytest.raises(SystemExit) as exit_:
        main(["--cluster", "127.0.0.1:9", *argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_parser_accepts_every_file_command():
    p = build_parser()
    args = p.parse_args(["put", "-", "a/b"])
    assert (args.command, args.local, args.remote) == ("put", "-", "a/b")
    args = p.parse_args(["get", "--stale", "/a"])
    assert args.stale and args.local == "-"
    assert p.parse_args(["get", "/a", "out"]).local == "out"
    assert p.parse_args(["ls"]).prefix == "/"
    assert p.parse_args(["ls", "--stale", "docs"]).stale
    assert p.parse_args(["stat", "x"]).remote == "x"
    assert p.parse_args(["--json", "rm", "x"]).json


@pytest.mark.parametrize("argv", [["put", "onlyone"], ["rm"], ["put", "--stale", "a", "b"],
                                  ["rm", "--stale", "x"], ["get"], ["stat", "a", "b"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    code, _, err = run_main(argv, capsys)
    assert code == EXIT_USAGE
    assert err.startswith("storgctl: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["stat", "/a/../b"], ["rm", "a//b"], ["get", "/a/"], ["ls", "a/./b"], ["stat", "/"],
    ["rm", "a\x00b"], ["stat", "x" * 4097], ["put", "-", "/" + "é" * 2048 + "a"],
])
def test_invalid_paths_exit_2_before_contacting_the_cluster(argv, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == EXIT_USAGE
    assert err.startswith("storgctl: invalid ") and err.count("\n") == 1
    assert out == ""


def test_put_of_an_unreadable_local_file_exits_2(tmp_path, capsys):
    code, _, err = run_main(["put", str(tmp_path / "missing"), "/x"], capsys)
    assert code == EXIT_USAGE and "cannot read" in err and err.count("\n") == 1
    code, _, err = run_main(["put", str(tmp_path), "/x"], capsys)
    assert code == EXIT_USAGE and "is a directory" in err


def test_put_with_a_bad_remote_path_exits_2_even_with_a_bad_local(tmp_path, capsys):
    code, _, err = run_main(["put", str(tmp_path / "missing"), "a/../b"], capsys)
    assert code == EXIT_USAGE and "invalid path" in err


def test_get_into_an_unwritable_folder_exits_2(tmp_path, capsys):
    code, _, err = run_main(["get", "/x", str(tmp_path / "no" / "such" / "dir" / "f")], capsys)
    assert code == EXIT_USAGE and err.startswith("storgctl: cannot write")
    assert os.listdir(tmp_path) == []


def test_iso_time_is_utc_to_the_second_with_z():
    assert iso_time(NS) == "2023-11-14T22:13:20Z"
    assert iso_time(0) == "1970-01-01T00:00:00Z"


def test_ls_lines_are_size_time_path_with_sizes_aligned():
    files = [FileInfo("/a", 5, "00" * 32, NS, 1), FileInfo("/b/c d", 123456, "11" * 32, 0, 2)]
    lines = format_ls(files).splitlines()
    assert lines == [
        "     5  2023-11-14T22:13:20Z  /a",
        "123456  1970-01-01T00:00:00Z  /b/c d",
    ]
    assert format_ls([]) == ""


def test_json_objects_of_ls_and_stat():
    row = file_dict(INFO)
    assert {k: row[k] for k in ("path", "size", "sha256", "modified")} == {
        "path": "/docs/a.txt", "size": 1234, "sha256": "ab" * 32, "modified": "2023-11-14T22:13:20Z"}
    assert "chunks" not in row
    full = json.loads(json.dumps(file_dict(INFO, chunks=True)))
    assert full["chunks"] == [
        {"hash": "cd" * 32, "size": 1000, "holders": ["n1", "n2", "n3"]},
        {"hash": "ef" * 32, "size": 234, "holders": ["n2"]},
    ]


def test_stat_text_names_each_field_and_chunk():
    text = format_stat(INFO)
    assert "path:      /docs/a.txt" in text
    assert "sha256:    " + "ab" * 32 in text
    assert "modified:  2023-11-14T22:13:20Z" in text
    assert "chunks:    2" in text
    assert text.splitlines()[-2].split() == ["cd" * 32, "1000", "n1,n2,n3"]


def test_stat_shows_the_etag_content_type_and_a_composite():
    plain = replace_record(INFO, attrs=ObjectAttrs("12" * 16, "text/plain"))
    text = format_stat(plain)
    assert "etag:      " + "12" * 16 in text and "type:      text/plain" in text
    assert "composite" not in text
    multi = replace_record(INFO, attrs=ObjectAttrs("34" * 16 + "-2", parts=(1000, 234)))
    assert "sha256:    " + "ab" * 32 + " (composite of 2 parts)" in format_stat(multi)
    assert file_dict(multi)["parts"] == [1000, 234] and file_dict(multi)["etag"] == "34" * 16 + "-2"
    assert "etag" not in file_dict(INFO) and "etag:" not in format_stat(INFO)


@pytest.mark.parametrize("argv, why", [
    (["s3", "key", "create", "backup", "--role", "root"], "--role"),
    (["s3", "key", "create", "backup"], "--role"),
    (["s3", "key", "revoke"], "ID"),
    (["s3", "key"], "SUBCOMMAND"),
])
def test_s3_key_usage_errors_exit_2_before_contacting_the_cluster(argv, why, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == EXIT_USAGE and why in err and out == ""


@pytest.mark.parametrize("exc,code", [
    (NotFoundError("no such file"), EXIT_REFUSED),
    (BadRequest("bad path"), EXIT_USAGE),
    (IntegrityError("sha mismatch"), EXIT_INTEGRITY),
    (ClusterUnavailable("no leader"), EXIT_UNAVAILABLE),
    (LocalError("cannot read x"), EXIT_USAGE),
    (InvalidPath("has a '..' segment"), EXIT_USAGE),
    (ServerError(6, "internal error: boom"), EXIT_REFUSED),
    (DiskFull("put /a refused: n1 is below its disk reserve"), EXIT_UNAVAILABLE),
])
def test_errors_map_to_the_interface_exit_codes(exc, code):
    args = argparse.Namespace(remote="/a/b")
    got_code, message = exit_for(exc, args)
    assert got_code == code and message
    assert exit_for(RuntimeError("a bug"), args) is None


def test_disk_full_says_so():
    code, message = exit_for(DiskFull("put /a refused: n1 is below its disk reserve"), argparse.Namespace())
    assert code == EXIT_UNAVAILABLE == 3 and message.startswith("disk full: put /a refused")


def test_not_found_names_the_path():
    assert exit_for(NotFoundError("x"), argparse.Namespace(remote="/a/b")) == (EXIT_REFUSED, "/a/b: not found")


def test_error_messages_are_flattened_to_one_line():
    assert one_line("first\nsecond\r\n  third") == "first second third"


# --- progress bar --------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    assert progress_for("put /x", io.StringIO()) is None
    assert isinstance(progress_for("put /x", FakeTerminal()), ProgressBar)


def test_progress_bar_draws_in_place_and_ends_its_line():
    now = [0.0]
    term = FakeTerminal()
    bar = ProgressBar("get /x", term, width=10, clock=lambda: now[0])
    now[0] = 1.0
    bar(512 * 1024, 1024 * 1024)
    now[0] = 1.01
    bar(600 * 1024, 1024 * 1024)  # rate-limited: not drawn
    now[0] = 2.0
    bar(1024 * 1024, 1024 * 1024)
    bar.finish()
    out = term.getvalue()
    assert out.count("\r") == 3  # two draws and the final one
    assert "[#####.....]  50%" in out and "[##########] 100%" in out
    assert out.endswith("\n")


def test_progress_bar_without_a_total_shows_bytes_and_rate():
    bar = ProgressBar("put /x", FakeTerminal(), clock=lambda: 0.0)
    assert bar.render(3 * 1024 * 1024, None, 2.0) == "put /x  3.0 MiB  1.5 MiB/s"


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024 ** 3) == "5.0 GiB"


def test_a_bar_that_never_drew_prints_nothing():
    term = FakeTerminal()
    ProgressBar("put /x", term).finish()
    assert term.getvalue() == ""
