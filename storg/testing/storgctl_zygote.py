"""A fork server for storgctl: one process imports storgctl once, then forks one child per command.

Why: starting a Python interpreter and importing Twisted costs ~0.4 s of
CPU per storgctl (the fast commands, on the blocking driver, less, but still
tens of milliseconds), which on a two-core machine caps the fault tests' clients
at a few operations a second and starves the nodes.  A forked child runs
exactly ``storg.cli.main.main(argv)`` in a process of its own, with its own
stdin, stdout, stderr and exit status, as the installed ``storgctl``
would; only the interpreter start-up is shared.

Protocol (lines on stdin and stdout): a request is JSON
``{"argv": [...], "out": PATH, "err": PATH}`` with an optional ``"in": PATH``
(the child's stdin; /dev/null without it); the answer is ``started PID``;
when a child ends, ``exit PID STATUS`` follows (a negative status: killed by
that signal).  The server is single-threaded (a forked child of a threaded
process could inherit a held lock) and reaps children in its SIGCHLD handler.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import storg.cli.main as cli  # the imports this process exists to pay for once
import storg.client.api  # noqa: F401  (the Twisted driver: every command beyond the fast ones)
import storg.client.blocking  # noqa: F401  (the blocking driver: status, put, get, ls, stat, rm)

cli.commands()  # the command modules the parser and the Twisted path import lazily
cli.build_parser()


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        os.write(1, f"exit {pid} {code}\n".encode())


def _child(request: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    devnull = os.open(request.get("in") or os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (devnull, out, err):
        os.close(fd)
    # The server's sys.stdin may hold read-ahead of later requests: the child's is fd 0 afresh.
    sys.stdin = open(0, closefd=False)
    code = 1
    try:
        cli.main(request["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    signal.signal(signal.SIGCHLD, _reap)
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        request = json.loads(line)
        # Block SIGCHLD around the fork so "exit PID" never precedes "started PID".
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _child(request)
        os.write(1, f"started {pid}\n".encode())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


if __name__ == "__main__":
    serve()
