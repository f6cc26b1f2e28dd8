"""TLS on against off in pairs of short windows: two clusters up at once, measured in turn.

``file_bench.py --tls both`` starts a cluster per pass, so the two sides of a
pair are minutes apart, and on a shared host whose speed drifts that much
the ratio drifts with it.  Here both 3-node clusters (fsync on, encryption
at rest on; one with mutual TLS on every port, one without) run at the
same time, and each figure is measured as a pair of windows of a few
seconds, one on each cluster, the order alternating pair by pair
(A B, B A, A B, ...).  The idle cluster meanwhile only sends heartbeats.

Figures: 256 B puts/s and linearizable gets/s at 1, 16 and 64 clients (each
its own StorgClient, one request at a time), and the MB/s of a put and a
get of one large file through the client library; for each, the ratio
TLS on / off of every pair and their median (the goal of issue 15 is at
least 0.85), and the CPU per operation over all processes of each side::

    python benchmarks/tls_pairs.py [--rounds 5] [--seconds 3] [--clients 1 16 64] [--big-mb 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from benchlib import CpuMeter, cpu_flags, sha256_mbs
from file_bench import make_big_file, small_files
from storg.client.api import StorgClient
from storg.net.credentials import from_environment
from storg.testing.devcluster import ProcCluster, wait_for

TLS_VARIABLES = ("STORG_CA", "STORG_CERT", "STORG_KEY")


class Side:
    """One of the two clusters, and how this process's clients reach it."""

    def __init__(self, root: Path, tls: bool) -> None:
        self.name = "on" if tls else "off"
        self.cluster = ProcCluster.create(root / self.name, size=3, tls=tls, encryption=True)
        self.env = self.cluster.client_env("admin") if tls else {}

    def start(self) -> None:
        self.cluster.start_all()
        self.leader = wait_for(self.cluster.leader, 30, f"a leader with TLS {self.name}")
        self.addresses = [n.client_address for n in self.cluster.nodes.values()]
        self.meter = CpuMeter({nid: n.proc.pid for nid, n in self.cluster.nodes.items() if n.proc is not None})

    def use(self) -> None:
        """Point this process's clients (``from_environment``) at this side's TLS, or none."""
        for name in TLS_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(self.env)


async def big_pair(reactor: Any, side: Side, src: Path, sha: str, round_no: int) -> dict[str, float]:
    side.use()
    size = src.stat().st_size
    client = StorgClient(side.addresses, reactor=reactor, timeout=60, tls=from_environment())
    remote = f"/bench/big-{round_no}"
    try:
        before = side.meter.read()
        t0 = time.perf_counter()
        info = await client.put(str(src), remote)
        put_s = time.perf_counter() - t0
        put_cpu = sum(CpuMeter.used(before, side.meter.read()).values())
        assert info.sha256 == sha
        dst = src.with_suffix(f".{side.name}")
        before = side.meter.read()
        t0 = time.perf_counter()
        await client.get(remote, str(dst))
        get_s = time.perf_counter() - t0
        get_cpu = sum(CpuMeter.used(before, side.meter.read()).values())
        dst.unlink()
        await client.rm(remote)
    finally:
        client.close()
    gib = size / (1 << 30)
    return {"put MB/s": size / put_s / 1e6, "get MB/s": size / get_s / 1e6,
            "put CPU-s/GiB": put_cpu / gib, "get CPU-s/GiB": get_cpu / gib}


async def run(reactor: Any, args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="storg-tls-pairs-", dir=args.dir))
    sides = [Side(root, tls=False), Side(root, tls=True)]
    rates: dict[str, list[tuple[float, float]]] = {}
    cpus: dict[str, list[tuple[float, float]]] = {}

    def record(name: str, off: dict, on: dict, rate: str, cpu: str) -> None:
        rates.setdefault(name, []).append((off[rate], on[rate]))
        cpus.setdefault(name, []).append((off[cpu], on[cpu]))

    try:
        for side in sides:
            side.start()
        src = root / "big.src"
        sha = make_big_file(src, args.big_mb << 20) if args.big_mb else ""
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for clients in args.clients:
                results = {}
                for side in order:
                    side.use()
                    results[side.name] = await small_files(reactor, side.addresses, 256, clients, args.seconds,
                                                           f"r{r}-{clients}", side.meter, side.leader)
                off, on = results["off"], results["on"]
                record(f"256 B puts/s, {clients} clients", off[0], on[0], "ops", "cpu_total")
                record(f"256 B gets/s, {clients} clients", off[1], on[1], "ops", "cpu_total")
            if args.big_mb:
                big = {side.name: await big_pair(reactor, side, src, sha, r) for side in order}
                for what in ("put", "get"):
                    record(f"{args.big_mb} MiB {what} MB/s", big["off"], big["on"], f"{what} MB/s",
                           f"{what} CPU-s/GiB")
            print(f"round {r + 1}/{args.rounds} done ({'off, on' if order[0].name == 'off' else 'on, off'})",
                  flush=True)
    finally:
        for side in sides:
            side.cluster.close()
    print(f"TLS on / off, {args.rounds} pairs of {args.seconds:g} s windows, both clusters up, order alternating")
    print("the goal (issue 15): at least 0.85 on every figure")
    print(f"{'figure':>28} | median | pairs (off -> on, ratio)")
    for name, pairs in rates.items():
        ratios = [on / off for off, on in pairs]
        cells = "; ".join(f"{off:.0f} -> {on:.0f} ({on / off:.2f})" for off, on in pairs)
        print(f"{name:>28} | {statistics.median(ratios):6.2f} | {cells}")
    print("CPU per operation over all processes (ms per small op, CPU-s per GiB for the large file):")
    for name, pairs in cpus.items():
        extra = statistics.median(on / off for off, on in pairs)
        cells = "; ".join(f"{off:.3f} -> {on:.3f}" for off, on in pairs)
        print(f"{name:>28} | x{extra:5.2f} | {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each window")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the large file (0: skip)")
    parser.add_argument("--dir", default=None, help="where the clusters and files go")
    args = parser.parse_args()
    print(f"host: {cpu_flags()}; SHA-256 {sha256_mbs():.0f} MB/s on one core")
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
