"""Operations benchmark: snapshots, restart and catch-up with 100,000 files, on three real nodes.

Measures, on ``twistd storg`` processes (fsync on):

* snapshot size and the time to write it (from each node's log line
  "wrote a snapshot at index I: B bytes in S s"), for several snapshots;
* restart time of all three nodes from snapshot + log tail (each node's
  "started in N ms" line, which includes reading the snapshot), and the
  wall time until the cluster answers again, over several restarts;
* node memory: VmRSS after the restart and VmHWM (peak) at the end;
* the time for a new node to catch up: ``storgctl member add`` of a 4th
  node (it joins as a learner, gets the snapshot and the log, is promoted).

How the 100,000 files get there (``--create``):

* ``seed`` (default, about a minute): the nodes are started once (to create
  their data_dirs) and stopped; then this process applies 100,000
  PutFileCommands -- one distinct one-chunk file each, in 100 folders -- to
  a FileStoreStateMachine, writes that state as a snapshot into every
  node's data_dir, and stores each file's chunk in every node's chunk store
  (so repair and scrub find every copy; hard links on one file system).  The nodes restart from it; every
  later figure comes from the nodes themselves.
* ``client``: ``--concurrency`` StorgClient puts of small files through the
  leader (about 150-300 puts/s on a 2-core machine: ten minutes or more).

Run::

    python benchmarks/ops_bench.py [--files 100000] [--create seed|client] [--restarts 3]
    python benchmarks/ops_bench.py --in-process   # write/read cost alone, CPU and wall seconds
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from storg.client.api import StorgClient
from storg.fsm.machine import FileStoreStateMachine
from storg.net.credentials import from_environment
from storg.raft.types import ConfState, Entry, SnapshotMeta
from storg.server.snapshots.data import load_snapshot, write_frames
from storg.storage.chunks import ChunkStore
from storg.storage.logstore import DiskLogStore
from storg.testing.devcluster import ProcCluster, wait_for
from storg.wire import CODEC
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef
from storg.wire.objects import ObjectAttrs, PutObjectCommand

GOAL_SNAPSHOT_S = 5.0
GOAL_RESTART_S = 5.0
GOAL_RSS_MIB = 300.0

_WROTE = re.compile(r"wrote a snapshot at index (\d+): (\d+) bytes in ([\d.]+) s")
_STARTED = re.compile(r"started in (\d+) ms: .*snapshot at index (\d+) \+ (\d+) log entries")


def file_content(i: int) -> bytes:
    return b"storg ops bench file %d\n" % i


def file_path(i: int) -> str:
    return f"/bench/d{i % 100:02d}/f{i:07d}"


# --- creating the namespace ----------------------------------------------------------

def seed(cluster: ProcCluster, files: int) -> int:
    """Write ``files`` files into the stopped cluster as a snapshot; returns its index."""
    voters = sorted(cluster.nodes)
    fsm = FileStoreStateMachine()
    t0 = time.perf_counter()
    for i in range(files):
        data = file_content(i)
        digest = hashlib.sha256(data).hexdigest()
        cmd = PutFileCommand(0, 0, 1_700_000_000_000_000_000 + i, file_path(i), len(data), digest,
                             (ChunkRef(digest, len(data), tuple(voters)),))
        fsm.apply(Entry(index=2 + i, term=1, data=CODEC.encode(cmd)))
    # Index 1 is the first leader's no-op, already in every node's log.
    meta = SnapshotMeta(files + 1, 1, ConfState(voters=frozenset(voters)))
    first = cluster.data_dir(voters[0])
    store = DiskLogStore(first)
    store.load()
    writer = store.begin_snapshot(meta)
    size = write_frames(writer, fsm.freeze().frames())
    store.commit_snapshot(writer)
    store.close()
    snap = next((first / "snap").glob("snapshot-*.snap"))
    for nid in voters[1:]:
        shutil.copy(snap, cluster.data_dir(nid) / "snap" / snap.name)
    print(f"seeded {files} files: snapshot of {size} bytes at index {meta.index} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    chunks = ChunkStore(first / "chunks")
    for i in range(files):
        chunks.put(file_content(i), durable=False)
    # The other nodes get hard links: a chunk file is never changed in place.
    for nid in voters[1:]:
        shutil.copytree(first / "chunks", cluster.data_dir(nid) / "chunks", copy_function=os.link,
                        dirs_exist_ok=True)
    print(f"stored {files} chunks on each node in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return meta.index


async def put_files(reactor: Any, addresses: list[str], numbers: range, concurrency: int) -> float:
    """Put files ``numbers`` through StorgClient; returns puts per second."""
    client = StorgClient(addresses, reactor=reactor, timeout=60, tls=from_environment())
    todo = iter(numbers)
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        for i in todo:
            await client.put(io.BytesIO(file_content(i)), file_path(i))
            done += 1
            if done % 10_000 == 0:
                print(f"  {done} puts, {done / (time.perf_counter() - started):.0f}/s", file=sys.stderr)

    try:
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
                                  consumeErrors=True)
    finally:
        client.close()
    return len(numbers) / (time.perf_counter() - started)


# --- measuring ---------------------------------------------------------------------------

def in_process_costs(files: int, repeats: int, workdir: Path, etag: bool = False) -> dict:
    """CPU and wall seconds to write and to read back a ``files``-file snapshot in this process.

    The node does the same work (in a thread, or at start-up); CPU time
    shows what it costs apart from how busy the machine is.  ``etag``: every
    file has an MD5 ETag, as a put through a node gives it (issue 18).
    """
    fsm = FileStoreStateMachine()
    for i in range(files):
        data = file_content(i)
        digest = hashlib.sha256(data).hexdigest()
        cmd = PutFileCommand(0, 0, i, file_path(i), len(data), digest, (ChunkRef(digest, len(data), ("n1",)),))
        body = CODEC.encode(cmd)
        if etag:
            body = CODEC.encode(PutObjectCommand(False, "", "", ObjectAttrs(hashlib.md5(data).hexdigest()), body))
        fsm.apply(Entry(index=1 + i, term=1, data=body))
    store = DiskLogStore(workdir / "cpu")
    store.load()
    rows = []
    for r in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        writer = store.begin_snapshot(SnapshotMeta(files + r, 1, ConfState(voters=frozenset({"n1"}))))
        size = write_frames(writer, fsm.freeze().frames())
        store.commit_snapshot(writer)
        c1, w1 = time.process_time(), time.perf_counter()
        FileStoreStateMachine().install(load_snapshot(store))
        c2, w2 = time.process_time(), time.perf_counter()
        rows.append((size, c1 - c0, w1 - w0, c2 - c1, w2 - w1))
    store.close()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    return {"bytes": med[0], "write_cpu_s": med[1], "write_wall_s": med[2],
            "load_cpu_s": med[3], "load_wall_s": med[4]}


def rss_mib(cluster: ProcCluster, nid: str, field: str = "VmRSS") -> float:
    proc = cluster.nodes[nid].proc
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshots_written(cluster: ProcCluster) -> list[tuple[str, int, int, float]]:
    """(node, index, bytes, seconds) of every snapshot the nodes logged."""
    return [(nid, int(i), int(b), float(s))
            for nid in cluster.nodes for i, b, s in _WROTE.findall(cluster.log_text(nid))]


def last_start(cluster: ProcCluster, nid: str) -> tuple[float, int, int]:
    """(seconds, snapshot index, tail entries) of ``nid``'s latest start."""
    ms, index, tail = _STARTED.findall(cluster.log_text(nid))[-1]
    return int(ms) / 1000, int(index), int(tail)


def restart_all(cluster: ProcCluster) -> dict:
    """SIGTERM every node, start them all again; the nodes' start times and the wall time to a leader."""
    for nid in cluster.nodes:
        cluster.kill(nid, signal.SIGTERM)
    t0 = time.perf_counter()
    cluster.start_all()
    wait_for(cluster.leader, 120, "a leader after the restart", interval=0.02)
    wall = time.perf_counter() - t0
    starts = {nid: last_start(cluster, nid) for nid in cluster.nodes}
    return {"wall_s": wall, "node_start_s": {n: s[0] for n, s in starts.items()},
            "snapshot_index": {n: s[1] for n, s in starts.items()},
            "tail_entries": {n: s[2] for n, s in starts.items()},
            "rss_mib": {n: rss_mib(cluster, n) for n in cluster.nodes}}


def learner_catch_up(cluster: ProcCluster, nid: str = "n4") -> float:
    """Seconds for ``storgctl member add`` of a new, empty node to return (learner caught up, promoted)."""
    founders = sorted(cluster.nodes)
    node = cluster.add_node(nid)
    cluster.start(nid)
    t0 = time.perf_counter()
    out = cluster.storgctl("--timeout", "600", "member", "add", nid, "--peer", node.peer_address,
                           "--client", node.client_address, nodes=founders, timeout=900)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"member add failed: {out.stderr.decode()}")
    return seconds


async def one_pass(reactor: Any, args: argparse.Namespace, workdir: Path) -> dict:
    cluster = ProcCluster.create(workdir, size=3, raft={"snapshot_every": args.snapshot_every})
    os.environ.update(cluster.client_env("admin"))  # this process's clients use TLS too
    result: dict[str, Any] = {"files": args.files, "create": args.create}
    try:
        cluster.start_all()
        wait_for(cluster.leader, 60, "a leader")
        addresses = [n.client_address for n in cluster.nodes.values()]
        if args.create == "seed":
            for nid in cluster.nodes:
                cluster.kill(nid, signal.SIGTERM)
            seed(cluster, args.files)
            cluster.start_all()
            wait_for(cluster.leader, 120, "a leader after seeding")
        else:
            result["create_puts_per_s"] = await put_files(reactor, addresses, range(args.files),
                                                          args.concurrency)
        # Puts until every node wrote `--snapshots` snapshots of the whole namespace, then a tail.
        next_file = args.files
        rates = []
        for _ in range(4 * args.snapshots):
            if min(sum(1 for s in snapshots_written(cluster) if s[0] == nid)
                   for nid in cluster.nodes) >= args.snapshots:
                break
            batch = range(next_file, next_file + args.snapshot_every)
            rates.append(await put_files(reactor, addresses, batch, args.concurrency))
            next_file = batch.stop
        tail = range(next_file, next_file + args.tail)
        rates.append(await put_files(reactor, addresses, tail, args.concurrency))
        result["puts_per_s"] = statistics.median(rates)
        result["snapshots"] = snapshots_written(cluster)
        result["restarts"] = [restart_all(cluster) for _ in range(args.restarts)]
        result["peak_rss_mib"] = {n: rss_mib(cluster, n, "VmHWM") for n in cluster.nodes}
        if args.learner:
            result["learner_catch_up_s"] = learner_catch_up(cluster)
    finally:
        cluster.close()
    return result


def summarize(result: dict) -> None:
    snaps = result["snapshots"]
    restarts = result["restarts"]
    snap_s = statistics.median(s for *_, s in snaps)
    snap_mib = statistics.median(b for _, _, b, _ in snaps) / 2**20
    node_start = statistics.median(s for r in restarts for s in r["node_start_s"].values())
    wall = statistics.median(r["wall_s"] for r in restarts)
    rss = max(v for r in restarts for v in r["rss_mib"].values())
    peak = max(result["peak_rss_mib"].values())
    tail = statistics.median(t for r in restarts for t in r["tail_entries"].values())

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"\nstorg ops bench: {result['files']} files ({result['create']}), "
          f"{len(snaps)} snapshots, {len(restarts)} restarts of 3 nodes")
    print("| figure | median | goal |")
    print("|---|---|---|")
    print(f"| snapshot size | {snap_mib:.1f} MiB | |")
    print(f"| snapshot write time | {snap_s:.2f} s | < {GOAL_SNAPSHOT_S:.0f} s {verdict(snap_s < GOAL_SNAPSHOT_S)} |")
    print(f"| node start from snapshot + {tail:.0f}-entry tail | {node_start:.2f} s | "
          f"< {GOAL_RESTART_S:.0f} s {verdict(node_start < GOAL_RESTART_S)} |")
    print(f"| cluster restart to a leader (wall) | {wall:.2f} s | |")
    print(f"| node RSS after restart (max) | {rss:.0f} MiB | < {GOAL_RSS_MIB:.0f} MiB {verdict(rss < GOAL_RSS_MIB)} |")
    print(f"| node peak RSS (VmHWM, max) | {peak:.0f} MiB | < {GOAL_RSS_MIB:.0f} MiB {verdict(peak < GOAL_RSS_MIB)} |")
    print(f"| client puts/s during the run | {result['puts_per_s']:.0f} | |")
    if "learner_catch_up_s" in result:
        print(f"| new node catch-up (member add) | {result['learner_catch_up_s']:.1f} s | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--create", choices=("seed", "client"), default="seed")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--snapshot-every", type=int, default=500)
    parser.add_argument("--snapshots", type=int, default=3, help="snapshots per node to time")
    parser.add_argument("--tail", type=int, default=200, help="puts after the last snapshot")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--no-learner", dest="learner", action="store_false",
                        help="skip the new-node catch-up measurement")
    parser.add_argument("--in-process", action="store_true",
                        help="only time writing and reading the snapshot in this process (CPU and wall)")
    parser.add_argument("--etag", action="store_true",
                        help="with --in-process: every file has an MD5 ETag (as puts since issue 18)")
    parser.add_argument("--json", type=Path, help="also write all figures here")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's files here (default: a temporary folder)")
    args = parser.parse_args()

    if args.in_process:
        with tempfile.TemporaryDirectory(prefix="storg-ops-bench-", dir=".") as tmp:
            costs = in_process_costs(args.files, args.restarts, Path(tmp), args.etag)
        print(f"{args.files} files, median of {args.restarts}: snapshot {costs['bytes'] / 2**20:.1f} MiB; "
              f"write {costs['write_cpu_s']:.2f} s CPU ({costs['write_wall_s']:.2f} s wall); "
              f"read + install {costs['load_cpu_s']:.2f} s CPU ({costs['load_wall_s']:.2f} s wall)")
        return

    async def run(reactor: Any) -> None:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=False)
            result = await one_pass(reactor, args, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="storg-ops-bench-", dir=".") as tmp:
                result = await one_pass(reactor, args, Path(tmp))
        summarize(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
