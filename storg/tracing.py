"""An off-by-default timeline of a request's hops: where a small put waits (issue 17).

With ``STORG_TRACE=PATH`` in its environment, every storg process (the
client library, each node) appends one line per event to ``PATH``::

    <CLOCK_MONOTONIC ns> <pid> <who> <thread> <event> <detail>

``who`` is the node id (set by the node at start, :func:`set_name`) or
``client``.  CLOCK_MONOTONIC is one clock for every process of a machine,
so the lines of the client, the leader and the followers sort into one
timeline (``python -m storg.tracing PATH`` prints it with the gap since
the previous line).  Each line is one ``os.write`` on a file opened with
``O_APPEND``, which the kernel keeps whole and in order across processes.

Off (the variable unset, the default), a call site costs one global
lookup: they are all written ``if tracing.ON: tracing.mark(...)``.  On,
a line costs a few microseconds of CPU: for one request at a time, to
find the waits, not for measuring throughput.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_PATH = os.environ.get("STORG_TRACE", "")
ON = bool(_PATH)
"""Whether tracing is on in this process (read once, at import)."""

_fd: int | None = None
_who = "client"
_lock = threading.Lock()


def set_name(who: str) -> None:
    """Name this process in the timeline (a node calls it with its id)."""
    global _who
    _who = who.replace(" ", "_") or "?"


def mark(event: str, detail: object = "") -> None:
    """One line: now, this process and thread, ``event`` (one word) and ``detail``."""
    global _fd
    if not ON:
        return
    now = time.monotonic_ns()
    line = f"{now} {os.getpid()} {_who} {threading.current_thread().name.replace(' ', '_')} " \
           f"{event} {detail}\n".encode()
    with _lock:
        if _fd is None:
            _fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(_fd, line)


def trace_sockets() -> None:
    """Mark every TCP read and send of this process (Twisted's), to time the hops on the wire.

    Called by :func:`mark`'s users only when tracing is on: it wraps
    ``twisted.internet.tcp.Connection``'s ``doRead`` and ``writeSomeData``,
    so a line shows when bytes reached the socket, not when a protocol
    handed them to its (TLS, then TCP) transport.
    """
    if not ON:
        return
    from twisted.internet import tcp

    if getattr(tcp.Connection, "_storg_traced", False):
        return
    do_read, write_some = tcp.Connection.doRead, tcp.Connection.writeSomeData

    def traced_read(self: tcp.Connection) -> object:
        mark("tcp.readable", f"fd={self.fileno()}")
        return do_read(self)

    def traced_write(self: tcp.Connection, data: bytes) -> object:
        sent = write_some(self, data)
        mark("tcp.sent", f"fd={self.fileno()} bytes={sent}")
        return sent

    tcp.Connection.doRead = traced_read  # type: ignore[method-assign,assignment]
    tcp.Connection.writeSomeData = traced_write  # type: ignore[method-assign,assignment]
    tcp.Connection._storg_traced = True  # type: ignore[attr-defined]


def timeline(lines: list[str], since_ns: int = 0) -> list[str]:
    """The lines sorted by time, each with ms since the first and since the previous line."""
    rows = []
    for line in lines:
        parts = line.rstrip("\n").split(" ", 5)
        if len(parts) < 5 or not parts[0].isdigit() or int(parts[0]) < since_ns:
            continue
        rows.append((int(parts[0]), parts[2], parts[3], parts[4], parts[5] if len(parts) > 5 else ""))
    rows.sort()
    out, first, last = [], None, None
    for ns, who, thread, event, detail in rows:
        first = ns if first is None else first
        gap = 0.0 if last is None else (ns - last) / 1e6
        last = ns
        out.append(f"{(ns - first) / 1e6:9.3f} ms {gap:+8.3f}  {who:<8} {thread:<22} {event:<24} {detail}")
    return out


def main(argv: list[str]) -> int:
    """``python -m storg.tracing PATH [SINCE_NS]``: print the trace file as a timeline."""
    if not argv:
        print("usage: python -m storg.tracing PATH [SINCE_NS]", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        lines = f.readlines()
    for row in timeline(lines, int(argv[1]) if len(argv) > 1 else 0):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
