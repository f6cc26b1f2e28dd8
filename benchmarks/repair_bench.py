"""Repair benchmark on five real node processes (R = 3, 1 MiB chunks, fsync on).

1. Load ``--mb`` MiB (1 GiB by default) in 32 MiB files, kill one follower,
   and time until every chunk has three holders again, none of them the
   dead node (the time includes ``--grace``, after which repair may start).
2. Kill a second follower and put 2 MiB files in a loop until repair is
   done: client put MB/s *during* repair counts the puts that completed
   between the end of the grace and the end of repair; then the same loop
   for as long again on the same three live nodes with nothing to repair:
   put MB/s *without* repair.

Every figure is the median over ``--repeats`` passes::

    python benchmarks/repair_bench.py [--mb 1024] [--repeats 3] [--rate 50] [--grace 2]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from benchlib import run_passes
from storg.client.api import StorgClient
from storg.net.credentials import from_environment
from storg.testing.devcluster import ProcCluster, wait_for

CHUNK = 1 << 20
FILE = 32 << 20
PUT_FILE = 2 << 20


def pause(reactor: Any, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


async def holders_of(client: StorgClient, paths: list[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
    found = {}
    for path in paths:
        info = await client.stat(path)
        for c in info.chunks:
            found[c.hash] = (c.size, tuple(c.holders))
    return found


async def wait_restored(reactor: Any, client: StorgClient, paths: list[str], dead: set[str],
                        timeout: float = 3600) -> float:
    """Seconds until every chunk has three holders and none is dead."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            chunks = await holders_of(client, paths)
            if all(len(hs) == 3 and not dead & set(hs) for _, hs in chunks.values()):
                return time.perf_counter() - start
        except Exception:  # a leader change during the poll: ask again
            pass
        await pause(reactor, 0.25)
    raise TimeoutError("repair did not finish")


async def put_loop(client: StorgClient, tag: str, until: Any) -> list[float]:
    """Put 2 MiB files until ``until()`` is true; the completion time of each."""
    payload = os.urandom(PUT_FILE)
    finished = []
    n = 0
    while not until():
        await client.put(io.BytesIO(payload[:-8] + n.to_bytes(8, "big")), f"/load/{tag}/{n}")
        finished.append(time.perf_counter())
        n += 1
    return finished


def rate_within(finished: list[float], start: float, end: float) -> float:
    """MB/s of the puts that completed between ``start`` and ``end``."""
    count = sum(1 for t in finished if start <= t <= end)
    return count * PUT_FILE / max(end - start, 1e-9) / 1e6


async def one_pass(reactor: Any, args: argparse.Namespace, workdir: Path) -> dict:
    files = {"chunk_size": CHUNK, "replication_factor": 3, "repair_grace_s": args.grace,
             "repair_interval_s": 0.5, "repair_rate_mb_s": args.rate, "gc_interval_s": 5}
    cluster = ProcCluster.create(workdir, size=5, files=files)
    os.environ.update(cluster.client_env("admin"))  # this process's clients use TLS too
    client = None
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        addresses = [n.client_address for n in cluster.nodes.values()]
        client = StorgClient(addresses, reactor=reactor, timeout=60, tls=from_environment())
        paths = []
        for i in range(max(1, (args.mb << 20) // FILE)):
            data = os.urandom(min(FILE, args.mb << 20))
            path = f"/data/{i}"
            await client.put(io.BytesIO(data), path)
            paths.append(path)
        leader = cluster.leader()
        before = await holders_of(client, paths)
        followers = [n for n in sorted(cluster.nodes) if n != leader]
        first, second = followers[0], followers[1]
        lost = sum(size for size, hs in before.values() if first in hs)

        cluster.kill(first)
        client.close()
        addresses = [cluster.nodes[n].client_address for n in cluster.nodes if n != first]
        client = StorgClient(addresses, reactor=reactor, timeout=60, tls=from_environment())
        alone_s = await wait_restored(reactor, client, paths, {first})

        cluster.kill(second)
        killed = time.perf_counter()
        client.close()
        addresses = [cluster.nodes[n].client_address for n in cluster.nodes if n not in (first, second)]
        client = StorgClient(addresses, reactor=reactor, timeout=60, tls=from_environment())
        state = {"done": False}
        restoring = defer.Deferred.fromCoroutine(
            wait_restored(reactor, client, paths, {first, second}))
        restoring.addCallback(lambda s: state.update(done=True) or s)
        during = await put_loop(client, "during", lambda: state["done"])
        await restoring
        restored = time.perf_counter()
        # Repair may start once the grace is over: the window where it runs beside the puts.
        window_start = killed + args.grace
        window = max(restored - window_start, 1.0)
        stop_at = time.perf_counter() + window
        after = await put_loop(client, "after", lambda: time.perf_counter() >= stop_at)
        return {"alone_s": alone_s, "lost_mb": lost / 1e6, "with_load_s": restored - killed,
                "during_mbs": rate_within(during, window_start, restored),
                "after_mbs": rate_within(after, stop_at - window, stop_at)}
    finally:
        if client is not None:
            client.close()
        cluster.close()


def summarize(passes: list[dict], args: argparse.Namespace) -> None:
    med = statistics.median
    alone = med(p["alone_s"] for p in passes)
    lost = med(p["lost_mb"] for p in passes)
    print(f"storg repair benchmark: 5 nodes, R=3, 1 MiB chunks, {args.mb} MiB loaded, "
          f"repair_grace_s={args.grace}, repair_rate_mb_s={args.rate}, {len(passes)} passes (medians)")
    print(f"node lost holding {lost:.0f} MB of chunk copies: R copies restored in {alone:.1f} s "
          f"from the kill ({lost / max(alone - args.grace, 1e-9):.0f} MB/s after the grace)")
    print(f"second node lost, with client puts running: restored in "
          f"{med(p['with_load_s'] for p in passes):.1f} s from the kill")
    during, after = med(p["during_mbs"] for p in passes), med(p["after_mbs"] for p in passes)
    print(f"client put throughput: {during:.1f} MB/s during repair vs {after:.1f} MB/s without "
          f"({during / after:.0%})")
    print("per pass:", [{k: round(v, 1) for k, v in p.items()} for p in passes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="MiB of file data to load")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="files.repair_rate_mb_s")
    parser.add_argument("--grace", type=float, default=2.0, help="files.repair_grace_s")
    parser.add_argument("--dir", default=".", help="where the clusters go")
    args = parser.parse_args()

    run_passes(lambda reactor, tmp: one_pass(reactor, args, tmp),
               lambda passes: summarize(passes, args), args.repeats, "storg-repair-bench-", args.dir)


if __name__ == "__main__":
    main()
