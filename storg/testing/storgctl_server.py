"""Run the real ``storgctl`` from a fork server instead of a fresh interpreter per command.

Starting Python and importing Twisted costs ~0.4 s of CPU per storgctl.
The process and fault tests run thousands of them (every ``status`` poll
is one), which on a two-core machine starves the very nodes under test.
:class:`StorgctlRunner` keeps one server process (``storgctl_zygote.py``)
that has imported :mod:`storg.cli.main` once and forks a child per
command: each child runs exactly ``storg.cli.main.main(argv)`` in a process
of its own, with its own stdin, stdout, stderr and exit status, as the
installed ``storgctl`` would; only the interpreter start-up is shared.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

ZYGOTE = Path(__file__).with_name("storgctl_zygote.py")


class StorgctlRunner:
    """Runs storgctl commands as child processes of a fork server (see storgctl_zygote.py).

    ``run`` is thread-safe: many callers run commands at once.  A command
    still running after ``timeout`` is killed (SIGKILL), as a client that
    gives up would be, and reported with status None.
    """

    def __init__(self, env: dict[str, str], scratch: Path | None = None) -> None:
        self._own_scratch = None
        if scratch is None:
            self._own_scratch = tempfile.TemporaryDirectory(prefix="storgctl-runner-")
            scratch = Path(self._own_scratch.name)
        self.scratch = scratch
        # Clients a little less urgent than the nodes: a starved node misses heartbeats.
        self.proc = subprocess.Popen(["nice", "-n", "5", sys.executable, str(ZYGOTE)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both piped just above
        self._requests: IO[bytes] = self.proc.stdin
        self._replies: IO[bytes] = self.proc.stdout
        self._send = threading.Lock()
        self._started: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._cond = threading.Condition()
        self._count = 0
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._replies:
            word, pid, *rest = line.split()
            if word == b"started":
                self._started.put(int(pid))
            elif word == b"exit":
                with self._cond:
                    self._exits[int(pid)] = int(rest[0])
                    self._cond.notify_all()
        self._started.put(-1)  # the server died: wake a waiting sender

    def run(self, argv: list[str], timeout: float,
            input: bytes | None = None) -> tuple[int | None, bytes, str]:
        """(exit status or None if killed at ``timeout``, stdout, stderr) of ``storgctl ARGV``."""
        code, stdout, stderr = self._run(argv, timeout, input)
        return code, stdout, stderr.decode(errors="replace")

    def _run(self, argv: list[str], timeout: float,
             input: bytes | None) -> tuple[int | None, bytes, bytes]:
        with self._send:
            self._count += 1
            base = self.scratch / f"cmd{self._count}"
            out, err, inp = (base.with_suffix(s) for s in (".out", ".err", ".in"))
            request = {"argv": argv, "out": str(out), "err": str(err)}
            if input is not None:
                inp.write_bytes(input)
                request["in"] = str(inp)
            self._requests.write(json.dumps(request).encode() + b"\n")
            self._requests.flush()
            pid = self._started.get(timeout=30)
        if pid < 0:
            raise RuntimeError("the storgctl fork server died")
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still ours
                    while pid not in self._exits:
                        self._cond.wait()
                    break
                self._cond.wait(left)
            code = self._exits.pop(pid)
        killed = code < 0
        stdout = out.read_bytes() if out.exists() else b""
        stderr = err.read_bytes() if err.exists() else b""
        for path in (out, err, inp):
            path.unlink(missing_ok=True)
        return (None if killed else code), stdout, stderr

    def completed(self, argv: list[str], timeout: float,
                  input: bytes | None = None) -> subprocess.CompletedProcess:
        """``run`` shaped like ``subprocess.run(capture_output=True, timeout=...)``.

        As there, a command still running at ``timeout`` is killed and
        :class:`subprocess.TimeoutExpired` raised.
        """
        command = ["storgctl", *argv]
        code, stdout, stderr = self._run(argv, timeout, input)
        if code is None:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, code, stdout, stderr)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            self._requests.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        self._replies.close()
        if self._own_scratch is not None:
            self._own_scratch.cleanup()
