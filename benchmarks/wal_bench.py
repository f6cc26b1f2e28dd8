"""How close does WriteAheadLog.append come to the disk's write+fsync ceiling?

For entries of 256 B and 64 KiB in batches of 1, 16 and 256, it times
``WriteAheadLog.append`` (one record and one fsync per batch) beside two
raw loops that write the very same record bytes (``frame_batch`` of the
same batch, framed outside the timer) and fsync after each batch:

* raw: appends them to one growing file, the ceiling for durable appends
  on this disk as the issue defines it;
* zeroed: pwrites them into a file that was already filled with zeros and
  fsynced (outside the timer), the ceiling for a log that never pays for
  its own zero fill (e.g. one that recycles old segments).  On ext4 an
  fsync after overwriting written blocks commits no metadata, so this is
  the faster of the two; the WAL pays for its fill in its own time.

A fourth log, *sealed*, is a WriteAheadLog with encryption at rest (a
key file made for the run): the "sealed" columns are its MB/s and the
median ratio sealed / wal of the paired runs, the cost of sealing each
record (the goal of issue 16: at least 0.90).

Within a run the four alternate batch by batch (in rotating order), so a
busy disk or CPU hits all alike; each cell is the median of ``--repeats``
runs, each run spending about ``--budget`` seconds in each of the three.

    python benchmarks/wal_bench.py --repeats 5 --dir /var/tmp

The ratio columns are the medians over runs of WAL MB/s / raw MB/s and
WAL MB/s / zeroed MB/s (each run pairs them); the goal is >= 0.80 of raw
for batches.  "extra us" is the median of what append adds per batch over
the raw loop (framing, CRC, index, and any saving from the fill, which
makes it negative): on a busy machine the disk's noise swamps the ratio,
much less this.  "frame us" is the median time to frame one batch (the
columns, the join and the CRC: ``frame_batch``, the same work append does
before it writes), timed on the same batches: where "extra us" is about
"frame us", the log's own I/O costs what the raw loop's does and the gap
is Python.  (Records of 256 KiB and more are written from their parts,
never joined: there "frame us" counts a copy append does not make.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storg.raft.types import Entry
from storg.storage.keys import init_key_file
from storg.storage.wal import WriteAheadLog, frame_batch

SIZES = (256, 64 * 1024)
BATCHES = (1, 16, 256)
MIN_BATCHES = 3


def make_batch(first: int, n: int, payload: bytes) -> list[Entry]:
    return [Entry(1, first + k, data=payload) for k in range(n)]


class RawLog:
    """The ceiling: write the same record bytes to one file, fsync per batch."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class ZeroedLog:
    """The zeroed ceiling: pwrite the same bytes over zeros already on disk, fsync per batch."""

    CHUNK = 16 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.offset = self.zeroed = 0

    def prepare(self, nbytes: int) -> None:
        """Outside the timer: make sure the next ``nbytes`` land on zeros that are on disk."""
        if self.offset + nbytes > self.zeroed:
            grow = max(self.CHUNK, self.offset + nbytes - self.zeroed)
            zeros = bytes(grow)
            view = memoryview(zeros)
            while view:
                n = os.pwrite(self.fd, view, self.zeroed)
                view, self.zeroed = view[n:], self.zeroed + n
            os.fsync(self.fd)

    def append(self, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            n = os.pwrite(self.fd, view, self.offset)
            view, self.offset = view[n:], self.offset + n
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


KINDS = ("wal", "sealed", "raw", "zeroed")


def measure(root: Path, size: int, n: int, budget: float) -> dict[str, tuple[float, float]]:
    """One run: WAL, raw and zeroed batches interleaved, so disk noise hits all alike.

    Returns {"wal": (entries/s, MB/s), "raw": (...), "zeroed": (...)} over ~budget seconds each,
    and "frame": (median us to frame one batch, the record's bytes and CRC, 0): the part of
    append's work that is Python, timed on the same batches outside the other timers.
    """
    d = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    payload = os.urandom(size)
    log = WriteAheadLog.open(d / "wal")
    sealed = WriteAheadLog.open(d / "sealed", keyring=init_key_file(d / "cluster.key"))
    raw = RawLog(d / "raw.log")
    zeroed = ZeroedLog(d / "zeroed.log")
    spent = dict.fromkeys(KINDS, 0.0)
    rounds = nbytes = 0
    frame_us: list[float] = []
    try:
        while min(spent.values()) < budget or rounds < MIN_BATCHES:
            batch = make_batch(log.last_index + 1, n, payload)  # built outside the timer, like the caller's
            t = time.perf_counter()
            raw_buf = frame_batch(batch)  # exactly what append() writes for it
            frame_us.append((time.perf_counter() - t) * 1e6)
            nbytes += len(raw_buf)
            zeroed.prepare(len(raw_buf))
            k = rounds % len(KINDS)
            for kind in KINDS[k:] + KINDS[:k]:
                t = time.perf_counter()
                if kind == "wal":
                    log.append(batch)
                elif kind == "sealed":
                    sealed.append(batch)
                elif kind == "raw":
                    raw.append(raw_buf)
                else:
                    zeroed.append(raw_buf)
                spent[kind] += time.perf_counter() - t
            rounds += 1
    finally:
        log.close()
        sealed.close()
        raw.close()
        zeroed.close()
        shutil.rmtree(d, ignore_errors=True)
    out = {k: (rounds * n / t, nbytes / t / 1e6) for k, t in spent.items()}
    out["frame"] = (statistics.median(frame_us), 0.0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per cell; the median is shown")
    ap.add_argument("--dir", default=None, help="directory on the disk to test (default: system temp)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of appending per run")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir))
    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    started = time.monotonic()
    try:
        for _ in range(args.repeats):
            for size in SIZES:
                for n in BATCHES:
                    for kind, figures in measure(root, size, n, args.budget).items():
                        results.setdefault((kind, size, n), []).append(figures)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"WAL append vs raw write+fsync (growing file) and zeroed pwrite+fsync (pre-zeroed file), "
          f"{args.repeats} repeats (medians), dir {root.parent}")
    head = (f"{'entry':>6} {'batch':>5} | {'wal entries/s':>13} {'wal MB/s':>9} {'fsync/s':>8} | "
            f"{'raw MB/s':>9} {'ratio':>5} {'extra us':>8} {'frame us':>8} | {'zeroed MB/s':>11} {'ratio':>5} | "
            f"{'sealed MB/s':>11} {'/wal':>5}")
    print(head)
    print("-" * len(head))
    for size in SIZES:
        for n in BATCHES:
            w = results[("wal", size, n)]
            r = results[("raw", size, n)]
            z = results[("zeroed", size, n)]
            s = results[("sealed", size, n)]
            s_mbs = statistics.median(x[1] for x in s)
            s_ratio = statistics.median(sr[1] / wr[1] for sr, wr in zip(s, w, strict=True))
            frame = statistics.median(x[0] for x in results[("frame", size, n)])
            w_eps, w_mbs = statistics.median(x[0] for x in w), statistics.median(x[1] for x in w)
            r_mbs = statistics.median(x[1] for x in r)
            z_mbs = statistics.median(x[1] for x in z)
            # Runs are paired (same moment, same disk): the median of their ratios.
            ratio = statistics.median(wr[1] / rr[1] for wr, rr in zip(w, r, strict=True))
            z_ratio = statistics.median(wr[1] / zr[1] for wr, zr in zip(w, z, strict=True))
            # What append adds to each batch over the raw loop: steadier than the ratio on a noisy disk.
            extra = statistics.median(n / wr[0] - n / rr[0] for wr, rr in zip(w, r, strict=True)) * 1e6
            label = f"{size // 1024}K" if size >= 1024 else f"{size}B"
            print(f"{label:>6} {n:>5} | {w_eps:>13,.0f} {w_mbs:>9.1f} {w_eps / n:>8,.0f} | "
                  f"{r_mbs:>9.1f} {ratio:>5.2f} {extra:>8,.0f} {frame:>8,.0f} | {z_mbs:>11.1f} {z_ratio:>5.2f} | "
                  f"{s_mbs:>11.1f} {s_ratio:>5.2f}")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
