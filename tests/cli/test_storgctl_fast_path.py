"""storgctl's fast path: the commands a script loops over parse the same and never import Twisted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from storg.cli.main import FAST_COMMANDS, build_parser, command_of

CASES = [
    ["status"],
    ["--json", "status"],
    ["--cluster", "h:1", "--timeout=2", "put", "-", "/a", "--if-absent"],
    ["put", "x", "/a", "--if-match", "ab" * 32],
    ["put", "-r", "dir", "/a", "--jobs", "3"],
    ["--clus", "h:1", "get", "/a", "out", "--stale"],
    ["get", "-r", "/a", "dir"],
    ["ls"], ["ls", "/p", "--stale"],
    ["--ca", "c", "--cert", "x", "--key", "k", "stat", "/a"],
    ["rm", "/a"], ["rm", "-r", "/a", "--dry-run"],
    ["mv", "/a", "/b", "--force"], ["--json", "cp", "-r", "/a", "/b"],
]


@pytest.mark.parametrize("argv", CASES)
def test_a_fast_command_parses_as_the_full_parser_parses_it(argv):
    command = command_of(argv)
    assert command in FAST_COMMANDS
    assert build_parser(only=command).parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv,expected", [
    (["--help"], None), (["-h"], None), (["--c", "x", "status"], None),  # ambiguous: the full parser says so
    (["--json", "mv", "/a", "/b"], "mv"), (["--timeout", "3", "--", "ls"], "ls"), ([], None),
    (["--cluster=a:1", "member", "list"], "member"),
])
def test_the_command_word_is_found_only_when_it_is_certain(argv, expected):
    assert command_of(argv) == expected


@pytest.mark.parametrize("command", [["status"], ["mv", "/a", "/b"], ["cp", "-r", "/a", "/b"], ["rm", "-r", "/a"]])
def test_a_fast_command_imports_neither_twisted_nor_cryptography_nor_pyopenssl(command):
    """In a fresh interpreter, as the storgctl entry point runs: the command against nothing."""
    code = (
        "import json, sys\n"
        "from storg.cli.main import main\n"
        "try:\n"
        f"    main(['--cluster', '127.0.0.1:9', '--timeout', '0.2', *{command!r}])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'cryptography', 'OpenSSL', 'yaml'})\n"
        "print(json.dumps([code, heavy]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == [3, []], out.stderr
    assert out.stderr.startswith("storgctl: cluster unavailable")
