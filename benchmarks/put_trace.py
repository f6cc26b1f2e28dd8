"""The timeline of one small put (or get) at one client: every hop through client, leader and followers.

Starts three node processes (fsync on, TLS and encryption at rest on, as
file_bench.py runs them) with ``STORG_TRACE`` set (see :mod:`storg.tracing`),
makes ``--warm`` puts of ``--size`` bytes from one client, then ``--puts``
more, each after a pause so that no heartbeat or earlier put is in its way,
and prints the timeline of the put whose latency was the median::

    python benchmarks/put_trace.py [--size 256] [--warm 50] [--puts 9] [--tls on|off] [--op put|get]

With ``--op get`` the traced operations are linearizable gets of one file
of ``--size`` bytes (put first): the client's request, the ReadIndex
heartbeat round and the reply.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TRACE = Path(tempfile.mkdtemp(prefix="storg-trace-")) / "trace.log"
os.environ["STORG_TRACE"] = str(TRACE)  # before storg is imported: tracing reads it once

from twisted.internet import defer, task  # noqa: E402

from benchlib import cpu_flags  # noqa: E402
from storg import tracing  # noqa: E402
from storg.client.api import StorgClient  # noqa: E402
from storg.net.credentials import from_environment  # noqa: E402
from storg.testing.devcluster import ProcCluster, wait_for  # noqa: E402


async def run(reactor: object, args: argparse.Namespace, workdir: Path) -> None:
    tracing.trace_sockets()
    cluster = ProcCluster.create(workdir, size=3, tls=args.tls == "on", encryption=True)
    for name in ("STORG_CA", "STORG_CERT", "STORG_KEY"):
        os.environ.pop(name, None)
    if args.tls == "on":
        os.environ.update(cluster.client_env("admin"))
    try:
        cluster.start_all()
        leader = wait_for(cluster.leader, 30, "a leader")
        addresses = [cluster.nodes[leader].client_address]
        client = StorgClient(addresses, reactor=reactor, timeout=30, tls=from_environment())
        payload = os.urandom(args.size)
        try:
            for i in range(args.warm):
                await client.put(io.BytesIO(payload), f"/trace/warm/{i}")
            spans = []
            if args.op == "get":
                await client.put(io.BytesIO(payload), "/trace/get")
                for _ in range(args.warm):
                    await client.get("/trace/get", io.BytesIO())
            for i in range(args.puts):
                await task.deferLater(reactor, args.pause, lambda: None)
                start = time.monotonic_ns()
                if args.op == "get":
                    await client.get("/trace/get", io.BytesIO())
                else:
                    await client.put(io.BytesIO(payload), f"/trace/put/{i}")
                spans.append((time.monotonic_ns() - start, start))
        finally:
            client.close()
        # Let the followers' last lines land (they learn the commit with the next heartbeat).
        await task.deferLater(reactor, 0.3, lambda: None)
    finally:
        cluster.close()
    lines = TRACE.read_text().splitlines()
    latencies = sorted(s[0] for s in spans)
    median = statistics.median_low(latencies)
    chosen = next(s for s in spans if s[0] == median)
    following = [s[1] for s in spans if s[1] > chosen[1]]
    end = min(following) if following else chosen[1] + 10**9
    window = [line for line in lines if line.split(" ", 1)[0].isdigit()
              and chosen[1] <= int(line.split(" ", 1)[0]) < min(end, chosen[1] + int(args.window * 1e6))]
    print(f"host: {cpu_flags()}")
    print(f"{args.size} B {args.op} at 1 client, TLS {args.tls}, leader {leader}; latencies of the "
          f"{args.puts} traced {args.op}s (ms): " + " ".join(f"{s[0] / 1e6:.2f}" for s in spans))
    print(f"the median {args.op} ({median / 1e6:.2f} ms), its timeline (ms since its start, +ms since "
          f"the line before; lines to {args.window:.0f} ms after its start):")
    for row in tracing.timeline(window):
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--puts", type=int, default=9)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between traced puts")
    parser.add_argument("--window", type=float, default=20.0, help="ms of trace shown after the put starts")
    parser.add_argument("--tls", choices=("on", "off"), default="on")
    parser.add_argument("--op", choices=("put", "get"), default="put", help="what is traced")
    parser.add_argument("--dir", default=".", help="where the cluster goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="storg-put-trace-", dir=args.dir) as tmp:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args, Path(tmp))))
    TRACE.unlink(missing_ok=True)
    TRACE.parent.rmdir()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
