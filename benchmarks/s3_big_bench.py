"""S3 gateway memory benchmark: S3's largest single PutObject and a larger multipart upload,
with every node process's resident memory sampled throughout.

The issue's claim: no request body or object is held whole in memory, so a
5 GiB PutObject and a 10 GiB multipart upload keep every node's RSS under
200 MiB.  This runs them for real: three node processes (TLS and
encryption at rest on, fsync on, as users run them), boto3 as it comes
(its default CRC32 checksums, sent in an aws-chunked trailer over HTTPS):

1. one ``put_object`` of a ``--put-mb`` file (5120 MiB by default: one
   PUT, streamed), then a GET of it hashed as it streams and compared;
2. ``upload_file`` of a ``--multipart-mb`` file (10240 MiB) in
   ``--part-mb`` parts (8 MiB), then a GET of it hashed and compared.

Each source file is written piece by piece (no two MiB alike, so chunks
do not dedup) and deleted once its object has been read back; the object
is deleted too, and the next phase waits (up to ``--reclaim-s``) for
garbage collection to give its disk back.  A sampler thread reads VmRSS
of every node from /proc every 0.2 s; the script prints MiB/s for each
transfer, each node's peak sampled RSS per phase and its VmHWM (the
kernel's peak, start-up included), the host's CPU flags, and PASS or
FAIL against the limit (VmHWM of every node under ``--limit-mib``)::

    python benchmarks/s3_big_bench.py [--put-mb 5120] [--multipart-mb 10240] [--part-mb 8]

The cluster and the files live in a temporary folder under ``--dir``
(the current folder by default; the default sizes need about 50 GB free),
removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import cpu_flags
from storg.testing.devcluster import ProcCluster, wait_for
from storg.testing.s3clients import boto3_client, create_key

MIB = 1024 * 1024
READ_PIECE = 8 * MIB
BUCKET = "big"


def write_source(path: Path, mib: int) -> str:
    """A file of ``mib`` MiB written a MiB at a time (each MiB numbered): its SHA-256."""
    block = bytearray(os.urandom(MIB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(mib):
            block[:8] = i.to_bytes(8, "big")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def proc_status_kib(pid: int, field: str) -> int:
    """One ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler:
    """Every node's VmRSS, sampled in a thread; the peak of each during the current phase."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def begin(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = {nid: proc_status_kib(pid, "VmRSS") for nid, pid in self.pids.items()}
        with self._lock:
            peaks = self.peaks.setdefault(self.phase, dict.fromkeys(self.pids, 0))
            for nid, kib in rss.items():
                peaks[nid] = max(peaks[nid], kib)

    def stop(self) -> None:
        """Stop sampling, with one last sample (again: nothing more)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.sample()


def hash_object(s3: Any, key: str) -> str:
    """The SHA-256 of a GetObject's body, hashed piece by piece as it streams (never held whole)."""
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    digest = hashlib.sha256()
    while piece := body.read(READ_PIECE):
        digest.update(piece)
    return digest.hexdigest()


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (the nodes' data: chunks, logs, snapshots)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass  # collected meanwhile
    return total


def wait_reclaimed(data: Path, below: int, seconds: float) -> int:
    """Wait (up to ``seconds``) until the nodes' data is under ``below`` bytes; what it is then."""
    deadline = time.monotonic() + seconds
    size = tree_bytes(data)
    while size >= below and time.monotonic() < deadline:
        time.sleep(2)
        size = tree_bytes(data)
    return size


class Run:
    def __init__(self, cluster: ProcCluster, work: Path, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.work = work
        self.args = args
        key = create_key(cluster, "big", "readwrite")
        self.s3 = boto3_client(cluster, key, max_pool_connections=16, read_timeout=300)
        self.s3.create_bucket(Bucket=BUCKET)
        self.rates: list[tuple[str, float]] = []
        self.ok = True

    def check(self, what: str, got: str, want: str) -> None:
        if got != want:
            self.ok = False
            print(f"FAIL: {what}: SHA-256 {got}, expected {want}")

    def one_put(self, sampler: RssSampler) -> None:
        mib = self.args.put_mb
        source = self.work / "put.bin"
        want = write_source(source, mib)
        sampler.begin(f"PutObject {mib} MiB")
        with open(source, "rb") as f:
            _, seconds = timed(self.s3.put_object, Bucket=BUCKET, Key="one-put", Body=f)
        self.rates.append((f"PutObject {mib} MiB (one PUT)", mib / seconds))
        source.unlink()
        self.read_back(sampler, "one-put", f"GetObject {mib} MiB", mib, want, "the single PUT read back")

    def multipart(self, sampler: RssSampler) -> None:
        from boto3.s3.transfer import TransferConfig
        mib, part = self.args.multipart_mb, self.args.part_mb * MIB
        source = self.work / "multipart.bin"
        want = write_source(source, mib)
        config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=8)
        sampler.begin(f"multipart upload {mib} MiB")
        _, seconds = timed(self.s3.upload_file, str(source), BUCKET, "multipart", Config=config)
        self.rates.append((f"multipart upload {mib} MiB ({self.args.part_mb} MiB parts)", mib / seconds))
        source.unlink()
        self.read_back(sampler, "multipart", f"GetObject {mib} MiB (multipart)", mib, want,
                       "the multipart upload read back")

    def read_back(self, sampler: RssSampler, key: str, label: str, mib: int, want: str, what: str) -> None:
        """GET ``key`` hashing it as it streams (its rate under ``label``) and compare with ``want``."""
        sampler.begin(label)
        got, seconds = timed(hash_object, self.s3, key)
        self.rates.append((label, mib / seconds))
        self.check(what, got, want)

    def delete_and_reclaim(self, key: str, before: int) -> None:
        """Delete ``key`` and wait for its chunks to be collected (disk for the next phase)."""
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        left = wait_reclaimed(self.cluster.root / "data", before + 256 * MIB, self.args.reclaim_s)
        print(f"after deleting {key}: {left / MIB:.0f} MiB of node data left", file=sys.stderr)


def report(sampler: RssSampler, pids: dict[str, int], hwm: dict[str, int], rates: list[tuple[str, float]],
           limit_mib: float, ok: bool) -> bool:
    nodes = list(pids)
    print(f"host: {cpu_flags()}")
    print(f"{'transfer':<44} {'MiB/s':>8}")
    for name, rate in rates:
        print(f"{name:<44} {rate:>8.1f}")
    print(f"{'peak sampled VmRSS (MiB)':<44} " + " ".join(f"{nid:>7}" for nid in nodes))
    for phase, peaks in sampler.peaks.items():
        print(f"{phase:<44} " + " ".join(f"{peaks[nid] / 1024:>7.1f}" for nid in nodes))
    print(f"{'VmHWM, the whole run (MiB)':<44} " + " ".join(f"{hwm[nid] / 1024:>7.1f}" for nid in nodes))
    under = all(0 < kib / 1024 < limit_mib for kib in hwm.values())
    passed = ok and under
    print(f"{'PASS' if passed else 'FAIL'}: every node's VmHWM {'<' if under else 'not <'} {limit_mib:.0f} MiB"
          + ("" if ok else "; a read-back did not match"))
    return passed


def main(args: argparse.Namespace) -> int:
    os.makedirs(args.dir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3bigbench-", dir=args.dir)).resolve()
    cluster = ProcCluster.create(work / "cluster", size=3, s3=True)
    sampler: RssSampler | None = None
    try:
        cluster.start_all()
        print(f"leader at the start: {wait_for(cluster.leader, 60, 'a leader', 0.2)}; boto3 talks to n1's gateway")
        pids = {nid: node.proc.pid for nid, node in cluster.nodes.items() if node.proc is not None}
        sampler = RssSampler(pids)
        sampler.start()
        run = Run(cluster, work, args)
        idle = tree_bytes(cluster.root / "data")
        if args.put_mb:
            run.one_put(sampler)
            if args.multipart_mb:
                sampler.begin("delete, collect")
                run.delete_and_reclaim("one-put", idle)
        if args.multipart_mb:
            run.multipart(sampler)
        sampler.stop()
        hwm = {nid: proc_status_kib(pid, "VmHWM") for nid, pid in pids.items()}
        dead = [nid for nid, node in cluster.nodes.items() if not node.alive()]
        if dead:
            print(f"FAIL: node(s) {', '.join(dead)} exited during the run")
            return 1
        return 0 if report(sampler, pids, hwm, run.rates, args.limit_mib, run.ok) else 1
    finally:
        if sampler is not None:
            sampler.stop()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--put-mb", type=int, default=5120, help="the single PutObject's MiB (0: skip)")
    parser.add_argument("--multipart-mb", type=int, default=10240, help="the multipart upload's MiB (0: skip)")
    parser.add_argument("--part-mb", type=int, default=8, help="the multipart upload's part size in MiB")
    parser.add_argument("--limit-mib", type=float, default=200.0, help="every node's VmHWM must stay under this")
    parser.add_argument("--reclaim-s", type=float, default=180.0,
                        help="seconds to wait for the first object's chunks to be collected")
    parser.add_argument("--dir", default=".", help="where the temporary cluster and source files go")
    sys.exit(main(parser.parse_args()))
