"""What the cluster benchmarks share: percentiles, and running passes on fresh clusters.

Each benchmark measures ``--repeats`` passes, each on a freshly created
cluster in a temporary folder, and prints medians, because this machine is
shared and its speed drifts.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_passes(one_pass: Callable[[Any, Path], Awaitable[dict]], summarize: Callable[[list[dict]], None],
               repeats: int, prefix: str, folder: str = ".") -> None:
    """Run ``one_pass(reactor, workdir)`` ``repeats`` times under the reactor, then summarize."""

    async def run(reactor: Any) -> None:
        passes = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as tmp:
                passes.append(await one_pass(reactor, Path(tmp)))
            print(f"pass {i + 1}/{repeats} done", file=sys.stderr)
        summarize(passes)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by each node process of a cluster and by this (the client) process.

    Throughput on this 2-core machine is bounded by CPU as much as by any
    wait, so the benchmarks print where the CPU went: per node, and for
    the client library in this process (``resource.getrusage``, all threads).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {"client": usage.ru_utime + usage.ru_stime}
        for nid, pid in self.pids.items():
            try:
                out[nid] = process_cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                out[nid] = float("nan")
        return out

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def cpu_flags(wanted: tuple[str, ...] = ("sha_ni", "aes", "avx2", "vaes")) -> str:
    """The host's CPU model and which of ``wanted`` flags it has: figures differ by host."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return f"{model}; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def sha256_mbs(seconds: float = 0.5) -> float:
    """MB/s of hashlib.sha256 on one core of this machine (1 MiB buffers, as chunks are)."""
    block = os.urandom(1 << 20)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        hashlib.sha256(block).digest()
        n += 1
    return n * len(block) / (time.perf_counter() - t0) / 1e6
