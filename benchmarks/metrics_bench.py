"""What /metrics costs: one scrape with 100,000 files, and small puts with a scraper against none.

Scrape: a single node in this process (TLS, ``http_listen``) whose state
machine is given ``--files`` files directly (as if applied: the scrape's
cost is what is measured, not the puts); then ``--scrapes`` GETs of
``/metrics`` over HTTPS one after the other, timed end to end, and the
reactor-thread part (:meth:`NodeMetrics.publish`) alone.

Load: three node processes (TLS, fsync on) and ``--clients`` clients putting
256-byte files for ``--seconds``, in ``--rounds`` rounds; each round runs
one stretch with a Prometheus-style scraper fetching every node's
``/metrics`` once a second (from a thread of this process) and one without,
alternating which goes first, and the ratio of puts/s with/without is
printed per round and as a median, so the machine's drift cancels out::

    python benchmarks/metrics_bench.py [--files 100000] [--clients 64] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from benchlib import CpuMeter
from file_bench import small_files
from storg.config import load_config
from storg.net.certs import init_dir
from storg.raft.types import Entry
from storg.server.service import NodeService
from storg.testing.devcluster import ProcCluster, free_port, wait_for
from storg.wire import CODEC
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef


def _context(certs: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "admin.pem"), str(certs / "admin-key.pem"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        return len(r.read())


async def scrape_cost(reactor: Any, files: int, scrapes: int, workdir: Path) -> None:
    certs = workdir / "certs"
    init_dir(str(certs), ["n1"])
    peer, client, http = free_port(), free_port(), free_port()
    path = workdir / "n1.yaml"
    path.write_text(yaml.safe_dump({
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{peer}",
        "client_listen": f"127.0.0.1:{client}", "http_listen": f"127.0.0.1:{http}",
        "cluster": {"n1": {"peer": f"127.0.0.1:{peer}", "client": f"127.0.0.1:{client}"}},
        "tls": {"ca": "certs/ca.pem", "cert": "certs/n1.pem", "key": "certs/n1-key.pem"}}))
    service = NodeService(load_config(path), reactor)
    service.startService()
    try:
        t0 = time.perf_counter()
        for i in range(files):
            digest = hashlib.sha256(b"%d" % i).hexdigest()
            cmd = PutFileCommand(0, 0, i, f"/d{i % 100}/f{i}", 10, digest, (ChunkRef(digest, 10, ("n1",)),))
            service.fsm.apply(Entry(index=10_000_000 + i, term=1, data=CODEC.encode(cmd)))
        print(f"{files} files given to the state machine in {time.perf_counter() - t0:.1f} s; "
              f"stats: {service.fsm.stats()}")
        ctx = _context(certs)
        url = f"https://127.0.0.1:{http}/metrics"
        await deferToThread(_get, url, ctx)  # the first: TLS session, imports
        walls = []
        size = 0
        for _ in range(scrapes):
            t = time.perf_counter()
            size = await deferToThread(_get, url, ctx)
            walls.append(time.perf_counter() - t)
        metrics = service.metrics
        assert metrics is not None
        publishes = []
        for _ in range(scrapes):
            metrics.publish()
            publishes.append(metrics.last_publish_seconds)
        print(f"one scrape with {files} files: median {statistics.median(walls) * 1000:.1f} ms end to end "
              f"(HTTPS request, publish, render in a thread; {size} bytes of text), max "
              f"{max(walls) * 1000:.1f} ms; of which on the reactor thread (publish): median "
              f"{statistics.median(publishes) * 1e6:.0f} us, max {max(publishes) * 1e6:.0f} us")
    finally:
        await service.stopService()


class Scraper:
    """A thread that GETs every node's /metrics once a second, as Prometheus would."""

    def __init__(self, urls: list[str], ctx: ssl.SSLContext) -> None:
        self.urls, self.ctx = urls, ctx
        self.stop = threading.Event()
        self.count = self.errors = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            for url in self.urls:
                try:
                    _get(url, self.ctx)
                    self.count += 1
                except OSError:
                    self.errors += 1
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


async def idle_scrape_cpu(cluster: ProcCluster, urls: list[str], meter: CpuMeter, scrapes: int = 50) -> None:
    """Node CPU per scrape, measured on the idle cluster: ``scrapes`` of each node, minus idling."""
    ctx = _context(cluster.certs)

    def burst() -> float:
        t = time.perf_counter()
        for _ in range(scrapes):
            for url in urls:
                _get(url, ctx)
        return time.perf_counter() - t

    before = meter.read()
    elapsed = await deferToThread(burst)
    used = CpuMeter.used(before, meter.read())
    before = meter.read()
    await task.deferLater(__import__("twisted.internet.reactor", fromlist=["reactor"]), elapsed, lambda: None)
    idle = CpuMeter.used(before, meter.read())
    per = {nid: (used[nid] - idle[nid]) / scrapes * 1000 for nid in cluster.nodes}
    print(f"node CPU per scrape (idle cluster, {scrapes} scrapes of each node over HTTPS, a new TLS "
          f"connection each, minus the same time idle): "
          + ", ".join(f"{nid} {ms:.1f} ms" for nid, ms in sorted(per.items()))
          + f"; at one scrape a second that is {max(per.values()) / 10:.2f}% of a core")


async def load(reactor: Any, args: argparse.Namespace, workdir: Path) -> None:
    cluster = ProcCluster.create(workdir, size=3, http=True)
    os.environ.update(cluster.client_env("admin"))
    cluster.start_all()
    try:
        leader = wait_for(cluster.leader, 30, "a leader")
        addresses = [n.client_address for n in cluster.nodes.values()]
        meter = CpuMeter({nid: n.proc.pid for nid, n in cluster.nodes.items() if n.proc is not None})
        urls = [f"https://{n.http_address}/metrics" for n in cluster.nodes.values()]
        await idle_scrape_cpu(cluster, urls, meter)
        ratios = []
        for rnd in range(args.rounds):
            figures = {}
            for scraping in ((True, False) if rnd % 2 == 0 else (False, True)):
                scraper = Scraper(urls, _context(cluster.certs)) if scraping else None
                if scraper is not None:
                    scraper.thread.start()
                puts, _gets = await small_files(reactor, addresses, 256, args.clients, args.seconds,
                                                f"r{rnd}-{int(scraping)}", meter, leader)
                if scraper is not None:
                    scraper.stop.set()
                    scraper.thread.join()
                    print(f"  round {rnd + 1}: {scraper.count} scrapes, {scraper.errors} failed")
                figures[scraping] = puts
            ratio = figures[True]["ops"] / figures[False]["ops"]
            ratios.append(ratio)
            print(f"round {rnd + 1}: {figures[True]['ops']:.0f} puts/s scraped, {figures[False]['ops']:.0f} "
                  f"without (p99 {figures[True]['p99']:.0f} / {figures[False]['p99']:.0f} ms): {ratio:.3f}")
        print(f"{args.clients} clients, 256-byte puts: scraped / not scraped, median of {args.rounds} rounds: "
              f"{statistics.median(ratios):.3f} ({(1 - statistics.median(ratios)) * 100:+.1f}% slower)")
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()

    async def run(reactor: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="metrics-bench-", dir=".") as tmp:
            await scrape_cost(reactor, args.files, args.scrapes, Path(tmp))
        if not args.skip_load:
            with tempfile.TemporaryDirectory(prefix="metrics-bench-", dir=".") as tmp:
                await load(reactor, args, Path(tmp))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
