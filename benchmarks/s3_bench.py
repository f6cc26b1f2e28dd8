"""S3 gateway benchmark: boto3 against the native client library, in the same run, on the same
three real node processes (fsync on, TLS on, as users run them).

Small objects: PUT and GET of 4 KiB objects with 1, 16 and 64 concurrent
clients for ``--seconds`` each (each client its own boto3 client in a
thread, or its own StorgClient on the reactor; one request at a time).
Large object: PUT and GET of one ``--big-mb`` object (1 GiB by default):
boto3's managed transfer with 8 MiB parts (multipart) against the native
``put``/``get`` of the same local file.

Rounds are interleaved: each round measures both, alternating which goes
first, so the machine's drift between minutes cancels out of the ratio.
For every figure the script prints each round's S3/native ratio and their
median (the goals: small-object rates at least 0.70, large-object MB/s at
least 0.80), and the host's CPU flags::

    python benchmarks/s3_bench.py [--rounds 3] [--seconds 5] [--big-mb 1024] [--clients 1,16,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from benchlib import CpuMeter, cpu_flags, percentile
from storg.client.api import StorgClient
from storg.net.credentials import TLSCredentials
from storg.testing.devcluster import ProcCluster, wait_for
from storg.testing.s3clients import boto3_client, create_key

MIB = 1024 * 1024
SMALL = 4096
PART = 8 * MIB


class Bench:
    def __init__(self, reactor: Any, cluster: ProcCluster, seconds: float, big: Path) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.seconds = seconds
        self.big = big
        self.key = create_key(cluster, "bench", "readwrite")
        self.addresses = [n.client_address for n in cluster.nodes.values()]
        self.tls = TLSCredentials(cluster.certs / "ca.pem", cluster.certs / "admin.pem",
                                  cluster.certs / "admin-key.pem")
        self.pool = ThreadPool(minthreads=4, maxthreads=80, name="boto3")
        self.pool.start()
        self.round = 0
        self.cpu = CpuMeter({nid: n.proc.pid for nid, n in cluster.nodes.items() if n.proc is not None})
        boto3_client(cluster, self.key).create_bucket(Bucket="bench")

    async def phase(self, op: str, run: Any, done: list[float], out: dict[str, float]) -> None:
        """Time ``run()`` (a Deferred) and fill ``out``: ops/s, p50 ms, and the CPU ms per op of
        the client process (boto3's threads, or the native library) and of all nodes together."""
        before = self.cpu.read()
        t0 = time.perf_counter()
        await run()
        out[op] = len(done) / (time.perf_counter() - t0)
        used = CpuMeter.used(before, self.cpu.read())
        out[op + "_p50"] = percentile(done, 0.5) * 1000
        out[op + "_client_cpu"] = used.pop("client") * 1000 / max(len(done), 1)
        out[op + "_nodes_cpu"] = sum(used.values()) * 1000 / max(len(done), 1)

    def in_thread(self, fn: Any, *args: Any) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    # -- small objects ----------------------------------------------------------------------

    async def native_small(self, clients: int) -> dict[str, float]:
        payload = os.urandom(SMALL)
        tag = f"native-{self.round}-{clients}"
        import io
        written: list[list[str]] = [[] for _ in range(clients)]
        lat: dict[str, list[float]] = {"put": [], "get": []}

        async def putter(k: int) -> None:
            c = StorgClient(self.addresses[k % 3:] + self.addresses[:k % 3], reactor=self.reactor, tls=self.tls)
            try:
                stop = time.perf_counter() + self.seconds
                n = 0
                while time.perf_counter() < stop:
                    path = f"/bench/{tag}/{k}/{n}"
                    n += 1
                    t0 = time.perf_counter()
                    await c.put(io.BytesIO(payload), path)
                    lat["put"].append(time.perf_counter() - t0)
                    written[k].append(path)
            finally:
                c.close()

        async def getter(k: int) -> None:
            c = StorgClient(self.addresses[k % 3:] + self.addresses[:k % 3], reactor=self.reactor, tls=self.tls)
            try:
                stop = time.perf_counter() + self.seconds
                n = 0
                while time.perf_counter() < stop:
                    sink = io.BytesIO()
                    t0 = time.perf_counter()
                    await c.get(written[k][n % len(written[k])], sink)
                    n += 1
                    lat["get"].append(time.perf_counter() - t0)
            finally:
                c.close()

        out: dict[str, float] = {}
        for op, fn in (("put", putter), ("get", getter)):
            await self.phase(op, lambda fn=fn: defer.gatherResults(
                [defer.Deferred.fromCoroutine(fn(k)) for k in range(clients)]), lat[op], out)
        return out

    async def s3_small(self, clients: int, endpoint_url: str | None = None) -> dict[str, float]:
        """boto3's 4 KiB PUTs then GETs, each client to a node's gateway in turn (or all to
        ``endpoint_url``: s3_ceiling.py's null endpoint)."""
        payload = os.urandom(SMALL)
        tag = f"s3-{self.round}-{clients}"
        nodes = list(self.cluster.nodes)
        s3s = [boto3_client(self.cluster, self.key, nodes[k % 3], endpoint_url, max_pool_connections=4)
               for k in range(clients)]
        written: list[list[str]] = [[] for _ in range(clients)]
        lat: dict[str, list[float]] = {"put": [], "get": []}
        lock = threading.Lock()

        def putter(k: int) -> None:
            s3 = s3s[k]
            stop = time.perf_counter() + self.seconds
            n = 0
            mine = []
            while time.perf_counter() < stop:
                key = f"{tag}/{k}/{n}"
                n += 1
                t0 = time.perf_counter()
                s3.put_object(Bucket="bench", Key=key, Body=payload)
                mine.append(time.perf_counter() - t0)
                written[k].append(key)
            with lock:
                lat["put"].extend(mine)

        def getter(k: int) -> None:
            s3 = s3s[k]
            stop = time.perf_counter() + self.seconds
            n = 0
            mine = []
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                s3.get_object(Bucket="bench", Key=written[k][n % len(written[k])])["Body"].read()
                n += 1
                mine.append(time.perf_counter() - t0)
            with lock:
                lat["get"].extend(mine)

        out: dict[str, float] = {}
        for op, fn in (("put", putter), ("get", getter)):
            await self.phase(op, lambda fn=fn: defer.gatherResults(
                [self.in_thread(fn, k) for k in range(clients)]), lat[op], out)
        return out

    # -- the large object -------------------------------------------------------------------

    async def native_big(self) -> dict[str, float]:
        size = self.big.stat().st_size
        c = StorgClient(self.addresses, reactor=self.reactor, tls=self.tls)
        path = f"/bench/big-native-{self.round}"
        try:
            t0 = time.perf_counter()
            await c.put(str(self.big), path)
            put = size / MIB / (time.perf_counter() - t0)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                await c.get(path, os.path.join(tmp, "back"))
                get = size / MIB / (time.perf_counter() - t0)
            await c.rm(path)
        finally:
            c.close()
        return {"put_mb_s": put, "get_mb_s": get}

    async def s3_big(self) -> dict[str, float]:
        from boto3.s3.transfer import TransferConfig
        size = self.big.stat().st_size
        s3 = boto3_client(self.cluster, self.key, max_pool_connections=16)
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=8)
        key = f"big-s3-{self.round}"

        def put() -> float:
            t0 = time.perf_counter()
            s3.upload_file(str(self.big), "bench", key, Config=config)
            return size / MIB / (time.perf_counter() - t0)

        def get() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                s3.download_file("bench", key, os.path.join(tmp, "back"), Config=config)
                rate = size / MIB / (time.perf_counter() - t0)
            s3.delete_object(Bucket="bench", Key=key)
            return rate

        return {"put_mb_s": await self.in_thread(put), "get_mb_s": await self.in_thread(get)}


def make_big(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for i in range(size // MIB):
            f.write(i.to_bytes(8, "big") + block[8:])  # no two chunks alike (no dedup)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    print(f"host: {cpu_flags()}")
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="s3bench-", dir=".") as tmp:
        root = Path(tmp)
        cluster = ProcCluster.create(root / "cluster", size=3, s3=True)
        cluster.start_all()
        bench = None
        try:
            wait_for(cluster.leader, 60, "a leader", 0.2)
            big = root / "big.bin"
            make_big(big, args.big_mb * MIB)
            bench = Bench(reactor, cluster, args.seconds, big)
            ratios: dict[str, list[float]] = {}
            figures: dict[str, list[tuple[float, float]]] = {}
            cpu: dict[str, list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                bench.round = r
                order = ("native", "s3") if r % 2 == 0 else ("s3", "native")
                for n in clients:
                    got = {}
                    for side in order:
                        got[side] = await (bench.native_small(n) if side == "native" else bench.s3_small(n))
                    for op in ("put", "get"):
                        name = f"4 KiB {op} x{n} (ops/s)"
                        ratios.setdefault(name, []).append(got["s3"][op] / got["native"][op])
                        figures.setdefault(name, []).append((got["s3"][op], got["native"][op]))
                        for side in order:
                            cpu.setdefault(f"4 KiB {op} x{n} {side}", []).append(
                                (got[side][op + "_client_cpu"], got[side][op + "_nodes_cpu"]))
                got = {}
                for side in order:
                    got[side] = await (bench.native_big() if side == "native" else bench.s3_big())
                for op in ("put_mb_s", "get_mb_s"):
                    name = f"{args.big_mb} MiB {op.split('_')[0]} (MB/s)"
                    ratios.setdefault(name, []).append(got["s3"][op] / got["native"][op])
                    figures.setdefault(name, []).append((got["s3"][op], got["native"][op]))
                print(f"round {r + 1}/{args.rounds} done ({' then '.join(order)} first)", file=sys.stderr)
            print(f"{'figure':<28} {'median S3/native':>17}  rounds (S3 / native = ratio)")
            for name, values in ratios.items():
                rounds = "; ".join(f"{s:.1f} / {nat:.1f} = {s / nat:.2f}" for s, nat in figures[name])
                print(f"{name:<28} {statistics.median(values):>17.2f}  {rounds}")
            # Where the CPU of one request went: on 2 cores shared by client and nodes, a client
            # that spends more per request than a whole native request costs bounds the ratio.
            print(f"\n{'CPU ms per op':<28} {'client':>7} {'nodes':>7}  rounds (client + nodes)")
            for name, pairs in cpu.items():
                rounds = "; ".join(f"{c:.2f} + {nd:.2f}" for c, nd in pairs)
                print(f"{name:<28} {statistics.median(c for c, _ in pairs):>7.2f} "
                      f"{statistics.median(nd for _, nd in pairs):>7.2f}  {rounds}")
        finally:
            if bench is not None:
                bench.pool.stop()
            cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--clients", default="1,16,64")
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options)))
