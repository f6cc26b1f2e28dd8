"""Tree benchmark on three real node processes (TLS, fsync on), through the real storgctl.

``put -r`` of ``--files`` files of ``--size`` bytes (10,000 of 4 KiB by
default) and back with ``get -r`` (files/s each way), beside a shell loop
of single ``storgctl put`` of the first ``--loop`` files (files/s: what a
script without ``-r`` gets); then ``mv`` of the whole folder (seconds, one
storgctl process included).  Issue 20's goals: 1,500 files/s each way,
and a 100,000-file folder moved in under a second (``--files 100000``)::

    python benchmarks/tree_bench.py [--files 10000] [--size 4096] [--loop 100] [--jobs 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from storg.testing.devcluster import BIN, ProcCluster, wait_for


def storgctl(cluster: ProcCluster, *args: str) -> subprocess.CompletedProcess:
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    out = subprocess.run([str(BIN / "storgctl"), "--cluster", addresses, *args], env=cluster.env,
                         capture_output=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"storgctl {' '.join(args[:3])}: exit {out.returncode}: {out.stderr.decode()}")
    return out


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--loop", type=int, default=100)
    p.add_argument("--jobs", type=int, default=64)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tree-bench-"))
    cluster = ProcCluster.create(root / "cluster", size=3)
    try:
        cluster.start_all()
        wait_for(cluster.leader, 60, "a leader")
        src = root / "src"
        for i in range(args.files):
            folder = src / f"d{i % 100:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i:06d}").write_bytes(os.urandom(args.size))
        first = sorted(src.rglob("f*"))[:args.loop]
        started = time.perf_counter()
        for path in first:
            storgctl(cluster, "put", str(path), f"/loop/{path.name}")
        loop = time.perf_counter() - started
        started, cpu = time.perf_counter(), child_cpu()
        summary = json.loads(storgctl(cluster, "--json", "put", "-r", "--jobs", str(args.jobs),
                                      str(src), "/tree").stdout)
        put, put_cpu = time.perf_counter() - started, child_cpu() - cpu
        assert summary["files"] == args.files and not summary["failed"], summary
        started, cpu = time.perf_counter(), child_cpu()
        summary = json.loads(storgctl(cluster, "--json", "get", "-r", "--jobs", str(args.jobs),
                                      "/tree", str(root / "back")).stdout)
        get, get_cpu = time.perf_counter() - started, child_cpu() - cpu
        assert summary["files"] == args.files and not summary["failed"], summary
        started = time.perf_counter()
        storgctl(cluster, "mv", "/tree", "/moved")
        mv = time.perf_counter() - started
        print(f"single puts in a shell loop: {len(first) / loop:8.0f} files/s ({len(first)} files)")
        print(f"put -r:                      {args.files / put:8.0f} files/s ({args.files} files of "
              f"{args.size} B, {args.jobs} in flight; storgctl used {put_cpu:.1f} s of CPU in {put:.1f} s)")
        print(f"get -r:                      {args.files / get:8.0f} files/s "
              f"(storgctl used {get_cpu:.1f} s of CPU in {get:.1f} s)")
        print(f"mv of the folder:            {mv:8.2f} s (one storgctl process included)")
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
