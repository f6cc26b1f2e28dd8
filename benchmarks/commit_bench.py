"""Consensus benchmark on three real node processes, fsync on.

Measures, through the client port (ProbeWrite: a 100-byte write that goes
through Raft and changes nothing):

* commits per second and latency p50/p99 with 1, 16 and 64 concurrent
  proposers (each its own connection, one request in flight at a time);
* elections during a steady stretch of proposals (should be none);
* failover: kill -9 of the leader until the next commit succeeds, over
  several rounds (the killed node is restarted and caught up between rounds).

Each figure is the median over ``--repeats`` passes.  Run::

    python benchmarks/commit_bench.py [--repeats 3] [--seconds 5] [--steady 60] [--rounds 10]

The proposers run in this one process; on a 2-core machine it competes with
the three nodes for CPU, like etcd's benchmark client does in
../shared/peers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from benchlib import percentile, run_passes
from storg.client.api import StorgClient
from storg.net.credentials import from_environment
from storg.testing.devcluster import ProcCluster

PAYLOAD = b"x" * 100


async def wait_leader(reactor: Any, cluster: ProcCluster, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            leader = cluster.leader()
            if leader:
                return leader
        except RuntimeError:
            pass
        await task.deferLater(reactor, 0.05, lambda: None)
    raise RuntimeError("no leader")


async def throughput(reactor: Any, addresses: list[str], clients: int, seconds: float) -> dict:
    """``clients`` proposers, each one request at a time, for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def proposer() -> None:
        nonlocal errors
        client = StorgClient(addresses, reactor=reactor, timeout=10, tls=from_environment())
        try:
            await client.probe_write(PAYLOAD)  # connect and find the leader first
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    await client.probe_write(PAYLOAD)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
        finally:
            client.close()

    started = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(proposer()) for _ in range(clients)])
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "ops_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


def leader_elections(cluster: ProcCluster) -> int:
    return sum(len(re.findall(r" became leader in term ", cluster.log_text(n))) for n in cluster.nodes)


async def steady(reactor: Any, cluster: ProcCluster, addresses: list[str], seconds: float) -> dict:
    before_terms = {r["id"]: r["term"] for r in cluster.status()}
    before = leader_elections(cluster)
    result = await throughput(reactor, addresses, 16, seconds)
    after_terms = {r["id"]: r["term"] for r in cluster.status()}
    return {
        "seconds": seconds,
        "elections": leader_elections(cluster) - before,
        "term_changes": sum(after_terms[n] != before_terms[n] for n in after_terms),
        "ops_per_s": result["ops_per_s"],
    }


async def failover(reactor: Any, cluster: ProcCluster, addresses: list[str], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        leader = await wait_leader(reactor, cluster)
        client = StorgClient(addresses, reactor=reactor, timeout=30, tls=from_environment())
        await client.probe_write(PAYLOAD)
        survivors = [cluster.nodes[n].client_address for n in cluster.nodes if n != leader]
        client.close()
        client = StorgClient(survivors, reactor=reactor, timeout=30, tls=from_environment())
        t0 = time.perf_counter()
        cluster.kill(leader, signal.SIGKILL)
        while True:
            try:
                await client.probe_write(PAYLOAD, timeout=1.0)
                break
            except Exception:
                continue
        times.append(time.perf_counter() - t0)
        client.close()
        cluster.start(leader)
        # Let the restarted node catch up before the next round.
        while True:
            rows = {r["id"]: r for r in cluster.status()}
            row = rows[leader]
            if row["role"] == "follower" and row["applied_index"] >= max(
                    r["commit_index"] or 0 for r in rows.values()) - 1:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
    return times


async def one_pass(reactor: Any, args: argparse.Namespace, workdir: Path) -> dict:
    cluster = ProcCluster.create(workdir, size=3)
    os.environ.update(cluster.client_env("admin"))  # this process's clients use TLS too
    try:
        cluster.start_all()
        await wait_leader(reactor, cluster)
        addresses = [n.client_address for n in cluster.nodes.values()]
        out: dict[str, Any] = {"throughput": []}
        for clients in args.clients:
            out["throughput"].append(await throughput(reactor, addresses, clients, args.seconds))
        if args.steady > 0:
            out["steady"] = await steady(reactor, cluster, addresses, args.steady)
        if args.rounds > 0:
            out["failover_s"] = await failover(reactor, cluster, addresses, args.rounds)
        return out
    finally:
        cluster.close()


def summarize(passes: list[dict], args: argparse.Namespace) -> None:
    print(f"storg commit benchmark: 3 node processes, fsync on, {len(passes)} passes (medians)")
    print(f"{'clients':>8} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for i, clients in enumerate(args.clients):
        rows = [p["throughput"][i] for p in passes]
        print(f"{clients:>8} {statistics.median(r['ops_per_s'] for r in rows):>10.0f} "
              f"{statistics.median(r['p50_ms'] for r in rows):>8.1f} "
              f"{statistics.median(r['p99_ms'] for r in rows):>8.1f} "
              f"{sum(r['errors'] for r in rows):>7}")
    if args.steady > 0:
        elections = [p["steady"]["elections"] for p in passes]
        print(f"elections during {args.steady:.0f} s of steady proposals (16 clients): "
              f"{elections} (per pass)")
    if args.rounds > 0:
        times = [t for p in passes for t in p["failover_s"]]
        print(f"failover (kill -9 leader -> next commit), {len(times)} rounds: "
              f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady load (0: skip)")
    parser.add_argument("--rounds", type=int, default=10, help="failover rounds per pass (0: skip)")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args()

    def report(passes: list[dict]) -> None:
        summarize(passes, args)
        if args.json:
            args.json.write_text(json.dumps(passes, indent=1))

    run_passes(lambda reactor, tmp: one_pass(reactor, args, tmp), report, args.repeats,
               "storg-commit-bench-", ".")


if __name__ == "__main__":
    main()
