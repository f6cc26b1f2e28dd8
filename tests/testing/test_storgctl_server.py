"""storgctl from the fork server behaves as the installed command: exit status, output, timeout.

(Its stdin is the ``input`` given: the process tests' ``put -`` round trips check those bytes.)"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from storg.testing.devcluster import REPO
from storg.testing.storgctl_server import StorgctlRunner


@pytest.fixture(scope="module")
def runner():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = StorgctlRunner(env)
    try:
        yield r
    finally:
        r.close()


def test_usage_errors_exit_2_with_one_storgctl_line(runner):
    out = runner.completed(["--cluster", "127.0.0.1:1", "put", "-", "a//b"], timeout=30, input=b"x")
    assert out.returncode == 2
    assert out.stderr.startswith(b"storgctl: ")
    assert out.stdout == b""


def test_an_unreachable_cluster_exits_3(runner):
    out = runner.completed(["--cluster", "127.0.0.1:1", "--timeout", "0.5", "status"], timeout=30)
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith(b"storgctl: ")


def test_a_command_running_past_its_timeout_is_killed_and_raises(runner):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(subprocess.TimeoutExpired):
            runner.completed(["--cluster", address, "--timeout", "30", "status"], timeout=0.5)
    assert runner.alive()
