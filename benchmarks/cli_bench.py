"""Whole-process storgctl latency: what a script that loops over storgctl waits for each command.

Starts a 3-node cluster (TLS and encryption at rest on, as the quick start
runs it) and, beside it, a 3-member etcd on 127.0.0.1 when ``etcd`` and
``etcdctl`` are installed (``apt-get install -y etcd-server etcd-client``;
etcd's row is skipped with a note otherwise).  Then ``--runs`` rounds,
each running every command once, one after the other, so the machine's
drift over the minute touches every row alike:

* ``python -c pass`` (the interpreter's own start-up, the floor);
* ``python -c 'import storg.wire'`` (the codec's import);
* ``storgctl put`` of a 1 KiB file, ``storgctl get`` of it to stdout,
  ``storgctl status``;
* ``etcdctl put`` of a 1 KiB value, ``etcdctl get`` of it (plain TCP: the
  etcd members here run without TLS).

Each figure is the median wall time of its runs, from fork to exit, and
beside it the median CPU time of the process (user + system).  One
warm-up round runs first and is not counted; the commands run with
bytecode caching allowed (``PYTHONDONTWRITEBYTECODE`` removed), as an
installed storgctl has its ``.pyc`` files.  The host's CPU flags and
SHA-256 rate are printed so that figures from other hosts can be told
apart.  Run it alone on the machine::

    flock /tmp/storg-heavy.lock python benchmarks/cli_bench.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import cpu_flags, sha256_mbs
from storg.testing.devcluster import BIN, ProcCluster, free_port, wait_for


class Etcd:
    """Three etcd members on loopback ports, for the side-by-side rows; stopped by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        names = ["e1", "e2", "e3"]
        peers = {n: free_port() for n in names}
        self.clients = {n: free_port() for n in names}
        initial = ",".join(f"{n}=http://127.0.0.1:{peers[n]}" for n in names)
        for n in names:
            log = open(root / f"{n}.log", "ab")
            self.procs.append(subprocess.Popen(
                ["etcd", "--name", n, "--data-dir", str(root / n),
                 "--listen-client-urls", f"http://127.0.0.1:{self.clients[n]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.clients[n]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peers[n]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[n]}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "storg-cli-bench"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            log.close()
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in self.clients.values())
        wait_for(self.healthy, 60, "a healthy etcd cluster")

    def ctl(self, *argv: str) -> list[str]:
        return ["etcdctl", "--endpoints", self.endpoints, *argv]

    def healthy(self) -> bool:
        out = subprocess.run(self.ctl("endpoint", "health"), capture_output=True,
                             env=dict(os.environ, ETCDCTL_API="3"))
        return out.returncode == 0

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one whole process, fork to exit; a failure stops the benchmark.

    CPU is the child's user + system time (``os.wait4``): on a shared
    machine it moves less than the wall time when other work competes.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace')}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="counted rounds (default 10)")
    parser.add_argument("--dir", default=None, help="where the clusters go (default: a temporary folder)")
    args = parser.parse_args()
    print(f"host: {cpu_flags(('sha_ni', 'aes', 'avx2'))}; SHA-256 {sha256_mbs():.0f} MB/s on one core")
    with tempfile.TemporaryDirectory(prefix="storg-cli-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        (root / "storg").mkdir()
        cluster = ProcCluster.create(root / "storg", size=3)
        etcd: Etcd | None = None
        try:
            cluster.start_all()
            wait_for(cluster.leader, 60, "a storg leader")
            if shutil.which("etcd") and shutil.which("etcdctl"):
                (root / "etcd").mkdir()
                etcd = Etcd(root / "etcd")
            else:
                print("note: etcd or etcdctl is not installed (apt-get install -y etcd-server etcd-client): "
                      "no etcd rows")
            rows = measure(cluster, etcd, root, args.runs)
        finally:
            cluster.close()
            if etcd is not None:
                etcd.close()
    print(f"median wall time of {args.runs} whole-process runs (interleaved rounds; goal for storgctl: "
          "at most 100 ms)")
    print(f"  {'':<34} {'wall':>8}   {'min':>6} {'max':>6}   {'CPU (user+sys)':>14}")
    for name, times in rows.items():
        ms = sorted(wall * 1000 for wall, _ in times)
        cpu = statistics.median(c * 1000 for _, c in times)
        print(f"  {name:<34} {statistics.median(ms):5.1f} ms   {ms[0]:6.1f} {ms[-1]:6.1f}   {cpu:11.1f} ms")


def measure(cluster: ProcCluster, etcd: Etcd | None, root: Path, runs: int) -> dict[str, list[tuple[float, float]]]:
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    storgctl = [str(BIN / "storgctl"), "--cluster", addresses]
    local = root / "one-kib"
    local.write_bytes(os.urandom(1024))
    value = os.urandom(512).hex()  # 1 KiB of text: etcdctl takes the value as an argument
    etcd_env = dict(os.environ, ETCDCTL_API="3")
    commands: dict[str, Callable[[int], tuple[float, float]]] = {
        "python -c pass": lambda i: timed([sys.executable, "-c", "pass"], env),
        "python -c 'import storg.wire'": lambda i: timed([sys.executable, "-c", "import storg.wire"], env),
        "storgctl put (1 KiB file)": lambda i: timed([*storgctl, "put", str(local), f"/bench/cli/{i}"], env),
        "storgctl get (to stdout)": lambda i: timed([*storgctl, "get", f"/bench/cli/{i}"], env),
        "storgctl status": lambda i: timed([*storgctl, "status"], env),
    }
    if etcd is not None:
        commands["etcdctl put (1 KiB value)"] = lambda i: timed(etcd.ctl("put", f"/bench/cli/{i}", value), etcd_env)
        commands["etcdctl get"] = lambda i: timed(etcd.ctl("get", f"/bench/cli/{i}"), etcd_env)
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, run in commands.items():
            elapsed = run(i)
            if i > 0:  # round 0 warms the caches (bytecode, page cache, connections)
                rows[name].append(elapsed)
        print(f"round {i}/{runs} done", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
