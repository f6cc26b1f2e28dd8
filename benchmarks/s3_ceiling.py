"""How fast boto3 could go on this host: boto3 against an S3 endpoint that does nothing, beside
storg's gateway and the native client, in the same run.

Issue 18 asks for S3 small-object rates of at least 0.70 of the native
client's.  On a 2-core host the boto3 client shares the cores with the
cluster, so its own CPU per request bounds the ratio whatever the gateway
does.  This measures that bound: ``null_s3.py`` answers every PUT and GET
at once (no signature check, no storage: nothing a gateway could do is
cheaper), and boto3, configured as ``s3_bench.py`` configures it, is run
against it, against storg's gateways and the native library, in
interleaved rounds (the order rotating), 4 KiB objects at 1, 16 and 64
clients.  It prints, per figure and round, null/native (the most any
gateway could reach: if it is under 0.70, the goal is out of reach with
boto3 on this host), gateway/native (s3_bench's figure) and gateway/null
(how much of the possible the gateway reaches), and the CPU per request
of the client process, the nodes and the null endpoint::

    cd benchmarks && python s3_ceiling.py [--rounds 3] [--seconds 3] [--clients 1,16,64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from benchlib import cpu_flags
from s3_bench import Bench
from storg.testing.devcluster import ProcCluster, free_port, wait_for

SIDES = ("native", "gateway", "null")


def start_null(cluster: ProcCluster) -> tuple[subprocess.Popen[bytes], str]:
    """null_s3.py on a free port with n1's certificate (boto3 checks it against the cluster's CA)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("null_s3.py")), "--port", str(port),
                             "--cert", str(cluster.certs / "n1.pem"), "--key", str(cluster.certs / "n1-key.pem")],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("null_s3.py did not start")
    return proc, f"https://127.0.0.1:{port}"


async def main(reactor: Any, args: argparse.Namespace) -> None:
    print(f"host: {cpu_flags()}")
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="s3ceiling-", dir=".") as tmp:
        root = Path(tmp)
        cluster = ProcCluster.create(root / "cluster", size=3, s3=True)
        cluster.start_all()
        bench = null = None
        try:
            wait_for(cluster.leader, 60, "a leader", 0.2)
            null, null_url = start_null(cluster)
            bench = Bench(reactor, cluster, args.seconds, root / "unused")
            bench.cpu.pids["null"] = null.pid  # counted with the nodes: the servers' CPU
            rates: dict[tuple[str, int, str], list[float]] = {}
            cpu: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                bench.round = r
                order = SIDES[r % 3:] + SIDES[:r % 3]
                for n in clients:
                    for side in order:
                        if side == "native":
                            got = await bench.native_small(n)
                        else:
                            got = await bench.s3_small(n, null_url if side == "null" else None)
                        for op in ("put", "get"):
                            rates.setdefault((op, n, side), []).append(got[op])
                            cpu.setdefault((op, n, side), []).append(
                                (got[op + "_client_cpu"], got[op + "_nodes_cpu"]))
                print(f"round {r + 1}/{args.rounds} done ({', '.join(order)})", file=sys.stderr)
            report(rates, cpu, clients)
        finally:
            if null is not None:
                null.kill()
                null.wait()
            if bench is not None:
                bench.pool.stop()
            cluster.close()


def report(rates: dict[tuple[str, int, str], list[float]], cpu: dict[tuple[str, int, str], list[tuple[float, float]]],
           clients: list[int]) -> None:
    print("4 KiB objects, ops/s per round; ratios are medians of the per-round ratios")
    print(f"{'figure':<16} {'null/native':>11} {'gateway/native':>14} {'gateway/null':>12}  "
          "rounds (native, gateway, null ops/s)")
    for op in ("put", "get"):
        for n in clients:
            nat, gw, nul = (rates[(op, n, side)] for side in SIDES)
            ratio = {name: statistics.median(a / b for a, b in zip(x, y, strict=True))
                     for name, x, y in (("null", nul, nat), ("gw", gw, nat), ("gwnull", gw, nul))}
            rounds = "; ".join(f"{a:.0f}, {b:.0f}, {c:.0f}" for a, b, c in zip(nat, gw, nul, strict=True))
            print(f"{op + ' x' + str(n):<16} {ratio['null']:>11.2f} {ratio['gw']:>14.2f} "
                  f"{ratio['gwnull']:>12.2f}  {rounds}")
    print("\nCPU ms per request, medians of the rounds: client process + servers (the three nodes"
          " and the null endpoint; for the null side that is the idle cluster and the endpoint)")
    for op in ("put", "get"):
        for n in clients:
            cells = []
            for side in SIDES:
                c, servers = (statistics.median(v[i] for v in cpu[(op, n, side)]) for i in range(2))
                cells.append(f"{side} {c:.2f} + {servers:.2f}")
            print(f"{op + ' x' + str(n):<16} " + ";  ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,16,64")
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options)))
