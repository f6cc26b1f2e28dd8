"""Terminal safety: ``storgctl ls`` (and ``stat``) print hostile paths escaped, reversibly; ``--json`` is untouched."""

from __future__ import annotations

import argparse
import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storg.cli.escape import escape_controls, escape_path, unescape_path
from storg.cli.main import format_stat, one_line, run_ls
from storg.wire.files import FileInfo

NS = 1_700_000_000_987_654_321

HOSTILE = "/a\nfake 0  1970-01-01T00:00:00Z  /etc/passwd\t\x1b]0;owned\x07\x1b[2J\r\x7f\x85\u202e\\x1b\U000e0001"


@pytest.mark.parametrize("path,shown", [
    ("/plain/name.txt", "/plain/name.txt"),
    ("/caf\u00e9/\u65e5\u672c", "/caf\u00e9/\u65e5\u672c"),  # letters of any script stay as they are
    ("/a\nb", "/a\\nb"),
    ("/a\tb\rc", "/a\\tb\\rc"),
    ("/x\x1b[31mred", "/x\\x1b[31mred"),
    ("/bell\x07", "/bell\\x07"),
    ("/del\x7f/c1\x9b", "/del\\x7f/c1\\x9b"),
    ("/back\\slash", "/back\\\\slash"),
    ("/looks\\x1b", "/looks\\\\x1b"),  # a real backslash can never be read as an escape
    ("/rtl\u202egnp.exe", "/rtl\\u202egnp.exe"),
    ("/zw\u200b\ufeff", "/zw\\u200b\\ufeff"),
    ("/ls\u2028ps\u2029", "/ls\\u2028ps\\u2029"),
    ("/tag\U000e0041", "/tag\\U000e0041"),
])
def test_escape_path(path, shown):
    assert escape_path(path) == shown
    assert unescape_path(shown) == path


def test_escaped_output_holds_no_control_character():
    shown = escape_path(HOSTILE)
    assert all(ch.isprintable() for ch in shown), shown
    assert unescape_path(shown) == HOSTILE


@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))))
def test_escaping_is_reversible_and_printable(text):
    shown = escape_path(text)
    assert unescape_path(shown) == text
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in shown), shown


def test_a_stray_backslash_is_not_an_escape():
    with pytest.raises(ValueError):
        unescape_path("/a\\qb")
    with pytest.raises(ValueError):
        unescape_path("/a\\")


class FakeClient:
    def __init__(self, files):
        self.files = files

    async def ls(self, prefix, stale=False):
        return self.files


def run_ls_now(files, capsys, *, as_json=False):
    coro = run_ls(FakeClient(files), argparse.Namespace(prefix="/", stale=False, json=as_json))
    with pytest.raises(StopIteration) as done:
        coro.send(None)  # the fake's ls never waits: the coroutine finishes at once
    assert done.value.value == 0
    return capsys.readouterr().out


def test_ls_prints_one_escaped_line_per_file(capsys):
    files = [FileInfo(HOSTILE, 5, "00" * 32, NS, 1), FileInfo("/ok", 7, "11" * 32, NS, 2)]
    out = run_ls_now(files, capsys)
    lines = out.splitlines()
    assert len(lines) == 2, out  # the newline in the name forged no line
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\t" not in out
    assert unescape_path(lines[0].split("  ", 2)[2]) == HOSTILE
    assert lines[1].endswith("  /ok")


def test_ls_json_is_not_escaped_by_us(capsys):
    files = [FileInfo(HOSTILE, 5, "00" * 32, NS, 1)]
    out = run_ls_now(files, capsys, as_json=True)
    assert "\x1b" not in out  # JSON's own escapes
    assert json.loads(out)[0]["path"] == HOSTILE  # the name exactly, no backslash of ours added


def test_stat_escapes_the_path():
    text = format_stat(FileInfo("/a\x1b[2J\nb", 1, "00" * 32, NS, 1))
    assert "path:      /a\\x1b[2J\\nb" in text


def test_error_lines_escape_controls_but_keep_backslashes():
    assert one_line("/a\x1b]0;x\x07: not found") == "/a\\x1b]0;x\\x07: not found"
    assert one_line("cannot read C:\\tmp\\x") == "cannot read C:\\tmp\\x"
    assert escape_controls("plain") == "plain"
