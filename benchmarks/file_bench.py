"""File store benchmark on three real node processes, fsync on, through the client library.

Small files: puts/s and latency p50/p99 of 256-byte and 4 KiB files with 1,
16 and 64 concurrent clients (each its own StorgClient, one request at a
time), then linearizable gets of the same files the same way.

Large files: put and get MB/s of one big file (1 GiB by default) beside the
ceiling measured in the same run: the same bytes written in chunk-sized
files with fsync into 3 folders and hashed, then read back and hashed.
Peak RSS (VmHWM) of every node after the big put.

Every figure is the median over ``--repeats`` passes::

    python benchmarks/file_bench.py [--repeats 3] [--seconds 5] [--big-mb 1024] [--big-only]
        [--tls on|off|both] [--encryption on|off|both]

``--encryption both`` measures the cost of encryption at rest the same way
(the goal: at most 10% slower, a ratio of at least 0.90, on small puts and
the 1 GiB put and get).  ``--tls both`` measures the cost of TLS: each round runs one pass with TLS
off and one with it on (alternating which goes first), and prints for
every figure the ratio on/off of each round and their median, so the
machine's drift between minutes cancels out of the comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from benchlib import CpuMeter, cpu_flags, percentile, run_passes, sha256_mbs
from storg.client.api import StorgClient
from storg.net.credentials import from_environment
from storg.testing.devcluster import BIN, ProcCluster, wait_for

CHUNK = 1 << 20


async def small_files(reactor: Any, addresses: list[str], size: int, clients: int,
                      seconds: float, tag: str, meter: CpuMeter, leader: str) -> tuple[dict, dict]:
    payload = os.urandom(size)
    written: list[list[str]] = [[] for _ in range(clients)]
    put_lat: list[float] = []
    get_lat: list[float] = []
    errors = {"put": 0, "get": 0}

    async def putter(k: int) -> None:
        client = StorgClient(addresses, reactor=reactor, timeout=30, tls=from_environment())
        try:
            await client.put(io.BytesIO(payload), f"/bench/{tag}/{k}/warm")
            stop = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < stop:
                path = f"/bench/{tag}/{k}/{n}"
                n += 1
                t0 = time.perf_counter()
                try:
                    await client.put(io.BytesIO(payload), path)
                except Exception:
                    errors["put"] += 1
                    continue
                put_lat.append(time.perf_counter() - t0)
                written[k].append(path)
        finally:
            client.close()

    async def getter(k: int) -> None:
        client = StorgClient(addresses[k % len(addresses):] + addresses[:k % len(addresses)],
                             reactor=reactor, timeout=30, tls=from_environment())
        try:
            stop = time.perf_counter() + seconds
            paths = written[k] or [f"/bench/{tag}/{k}/warm"]
            n = 0
            while time.perf_counter() < stop:
                sink = io.BytesIO()
                t0 = time.perf_counter()
                try:
                    await client.get(paths[n % len(paths)], sink)
                except Exception:
                    errors["get"] += 1
                    continue
                n += 1
                get_lat.append(time.perf_counter() - t0)
        finally:
            client.close()

    async def run_all(fn) -> tuple[float, dict[str, float]]:
        before = meter.read()
        t0 = time.perf_counter()
        await defer.gatherResults([defer.Deferred.fromCoroutine(fn(k)) for k in range(clients)])
        return time.perf_counter() - t0, CpuMeter.used(before, meter.read())

    put_time, put_cpu = await run_all(putter)
    get_time, get_cpu = await run_all(getter)

    def row(lat: list[float], elapsed: float, errs: int, cpu: dict[str, float]) -> dict:
        # CPU per operation (ms), by role: the warm-up op of each client is counted in the
        # CPU but not in the ops, which overstates it by at most 1 in (ops / clients).
        per_op = {k: v / max(len(lat), 1) * 1000 for k, v in cpu.items()}
        followers = [v for k, v in per_op.items() if k not in ("client", leader)]
        return {"ops": len(lat) / elapsed, "p50": percentile(lat, 0.5) * 1000,
                "p99": percentile(lat, 0.99) * 1000, "errors": errs,
                "cpu_leader": per_op.get(leader, float("nan")),
                "cpu_follower": statistics.mean(followers) if followers else float("nan"),
                "cpu_client": per_op["client"], "cpu_total": sum(per_op.values())}

    return (row(put_lat, put_time, errors["put"], put_cpu),
            row(get_lat, get_time, errors["get"], get_cpu))


def make_big_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[: min(CHUNK, size - written)]
            # Vary each block so chunks do not deduplicate.
            piece = written.to_bytes(8, "big") + piece[8:] if len(piece) >= 8 else piece
            f.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


def ceiling(src: Path, workdir: Path) -> tuple[float, float]:
    """MB/s of writing the file's chunks with fsync into 3 folders (hashing each), then reading back."""
    folders = [workdir / f"ceiling{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
    size = src.stat().st_size
    t0 = time.perf_counter()
    with open(src, "rb") as f:
        n = 0
        while chunk := f.read(CHUNK):
            name = hashlib.sha256(chunk).hexdigest()
            for folder in folders:
                fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, chunk)
                os.fsync(fd)
                os.close(fd)
            n += 1
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for entry in os.scandir(folders[0]):
        with open(entry.path, "rb") as f:
            hashlib.sha256(f.read()).hexdigest()
    read_s = time.perf_counter() - t0
    for folder in folders:
        for entry in os.scandir(folder):
            os.unlink(entry.path)
        folder.rmdir()
    return size / write_s / 1e6, size / read_s / 1e6


def peak_rss_mib(cluster: ProcCluster) -> dict[str, float]:
    out = {}
    for nid, node in cluster.nodes.items():
        if node.proc is None:
            continue
        for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out[nid] = int(line.split()[1]) / 1024
    return out


async def big_file(reactor: Any, cluster: ProcCluster, addresses: list[str], workdir: Path,
                   size: int, meter: CpuMeter, leader: str) -> dict:
    src = workdir / "big.src"
    sha = make_big_file(src, size)
    ceil_w, ceil_r = ceiling(src, workdir)
    client = StorgClient(addresses, reactor=reactor, timeout=60, tls=from_environment())
    try:
        before = meter.read()
        t0 = time.perf_counter()
        info = await client.put(str(src), "/bench/big")
        put_s = time.perf_counter() - t0
        put_cpu = CpuMeter.used(before, meter.read())
        assert info.sha256 == sha
        rss = peak_rss_mib(cluster)
        dst = workdir / "big.dst"
        before = meter.read()
        t0 = time.perf_counter()
        await client.get("/bench/big", str(dst))
        get_s = time.perf_counter() - t0
        get_cpu = CpuMeter.used(before, meter.read())
    finally:
        client.close()
    dst.unlink()
    cli = storgctl_get(cluster, addresses, dst)
    dst.unlink()
    src.unlink()
    gib = size / (1 << 30)

    def by_role(cpu: dict[str, float]) -> dict[str, float]:
        # Passes have different leaders: per node id, a median over passes would mix roles.
        followers = sum(v for k, v in cpu.items() if k not in ("client", leader))
        return {"leader": cpu.get(leader, float("nan")) / gib, "followers": followers / gib,
                "client": cpu["client"] / gib}

    return {"put_mbs": size / put_s / 1e6, "get_mbs": size / get_s / 1e6,
            "ceiling_write_mbs": ceil_w, "ceiling_read_mbs": ceil_r, "peak_rss_mib": rss,
            "put_cpu_s_per_gib": by_role(put_cpu), "get_cpu_s_per_gib": by_role(get_cpu),
            "storgctl_get_mbs": size / cli["seconds"] / 1e6, "storgctl_rss_mib": cli["rss_mib"],
            "storgctl_cpu_s_per_gib": cli["cpu_s"] / gib,
            "sha256_mbs": sha256_mbs()}


def storgctl_get(cluster: ProcCluster, addresses: list[str], dst: Path) -> dict[str, float]:
    """``storgctl get /bench/big DST`` as a process of its own: wall seconds, peak RSS and CPU.

    storgctl runs on the blocking driver (storg.client.blocking); its
    rusage comes from ``os.wait4``, so only that child is counted.
    """
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "storgctl"), "--cluster", ",".join(addresses), "--timeout", "60",
                             "get", "/bench/big", str(dst)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"storgctl get exited {proc.returncode}")
    return {"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


async def one_pass(reactor: Any, args: argparse.Namespace, workdir: Path, tls: bool = True,
                   encryption: bool = True) -> dict:
    cluster = ProcCluster.create(workdir, size=3, tls=tls, encryption=encryption)
    for name in ("STORG_CA", "STORG_CERT", "STORG_KEY"):
        os.environ.pop(name, None)
    if tls:
        os.environ.update(cluster.client_env("admin"))  # this process's clients use TLS too
    try:
        cluster.start_all()
        leader = wait_for(cluster.leader, 30, "a leader")
        addresses = [n.client_address for n in cluster.nodes.values()]
        meter = CpuMeter({nid: n.proc.pid for nid, n in cluster.nodes.items() if n.proc is not None})
        out: dict[str, Any] = {"small": {}}
        for size in [] if args.big_only else args.sizes:
            for clients in args.clients:
                out["small"][(size, clients)] = await small_files(
                    reactor, addresses, size, clients, args.seconds, f"{size}-{clients}", meter, leader)
        if args.big_mb > 0:
            out["big"] = await big_file(reactor, cluster, addresses, workdir, args.big_mb << 20, meter, leader)
        return out
    finally:
        cluster.close()


def summarize(passes: list[dict], args: argparse.Namespace) -> None:
    med = statistics.median
    print(f"storg file benchmark: 3 node processes, fsync on, {len(passes)} passes (medians)")
    print(f"{'size':>6} {'clients':>7} | {'puts/s':>7} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'gets/s':>7} {'p50 ms':>7} {'p99 ms':>7} | errors")
    for size in [] if args.big_only else args.sizes:
        for clients in args.clients:
            rows = [p["small"][(size, clients)] for p in passes]
            puts = [r[0] for r in rows]
            gets = [r[1] for r in rows]
            print(f"{size:>6} {clients:>7} | {med(r['ops'] for r in puts):>7.0f} "
                  f"{med(r['p50'] for r in puts):>7.1f} {med(r['p99'] for r in puts):>7.1f} | "
                  f"{med(r['ops'] for r in gets):>7.0f} {med(r['p50'] for r in gets):>7.1f} "
                  f"{med(r['p99'] for r in gets):>7.1f} | "
                  f"{sum(r['errors'] for r in puts + gets)}")
    if not args.big_only:
        print("CPU ms per operation (user + system, all threads; the machine has 2 cores):")
        print(f"{'size':>6} {'clients':>7} | {'put: leader':>11} {'follower':>8} {'client':>6} {'total':>6} | "
              f"{'get: leader':>11} {'follower':>8} {'client':>6} {'total':>6}")
        for size in args.sizes:
            for clients in args.clients:
                rows = [p["small"][(size, clients)] for p in passes]
                cells = []
                for kind in (0, 1):
                    cells.append(" ".join(
                        f"{med(r[kind][key] for r in rows):>{width}.3f}"
                        for key, width in (("cpu_leader", 11), ("cpu_follower", 8),
                                           ("cpu_client", 6), ("cpu_total", 6))))
                print(f"{size:>6} {clients:>7} | {cells[0]} | {cells[1]}")
    if args.big_mb > 0:
        bigs = [p["big"] for p in passes]
        put, get = med(b["put_mbs"] for b in bigs), med(b["get_mbs"] for b in bigs)
        cw, cr = med(b["ceiling_write_mbs"] for b in bigs), med(b["ceiling_read_mbs"] for b in bigs)
        print(f"{args.big_mb} MiB file: put {put:.0f} MB/s vs ceiling {cw:.0f} MB/s "
              f"({put / cw:.0%}); get {get:.0f} MB/s vs ceiling {cr:.0f} MB/s ({get / cr:.0%})")
        # The machine's speed drifts between passes: each pass's ratio is to its own ceiling.
        for i, b in enumerate(bigs, 1):
            print(f"  pass {i}: put {b['put_mbs']:.0f} MB/s / {b['ceiling_write_mbs']:.0f} "
                  f"({b['put_mbs'] / b['ceiling_write_mbs']:.0%}); get {b['get_mbs']:.0f} MB/s / "
                  f"{b['ceiling_read_mbs']:.0f} ({b['get_mbs'] / b['ceiling_read_mbs']:.0%})")
        sget = med(b["storgctl_get_mbs"] for b in bigs)
        print(f"storgctl get (a process of its own, the blocking driver): {sget:.0f} MB/s vs ceiling {cr:.0f} MB/s "
              f"({sget / cr:.0%}; per pass: "
              + ", ".join(f"{b['storgctl_get_mbs'] / b['ceiling_read_mbs']:.0%}" for b in bigs)
              + f"); its peak RSS {max(b['storgctl_rss_mib'] for b in bigs):.0f} MiB, "
              f"CPU {med(b['storgctl_cpu_s_per_gib'] for b in bigs):.2f} s per GiB")
        print(f"median of the per-pass ratios: put "
              f"{med(b['put_mbs'] / b['ceiling_write_mbs'] for b in bigs):.0%}, get "
              f"{med(b['get_mbs'] / b['ceiling_read_mbs'] for b in bigs):.0%}")
        for what in ("put", "get"):
            cpu = {k: med(b[f"{what}_cpu_s_per_gib"][k] for b in bigs) for k in ("leader", "followers", "client")}
            print(f"CPU seconds per GiB during the {what}: leader {cpu['leader']:.2f}, the two followers "
                  f"{cpu['followers']:.2f}, client {cpu['client']:.2f}; total {sum(cpu.values()):.2f}")
        sha = med(b["sha256_mbs"] for b in bigs)
        print(f"SHA-256 on one core of this machine: {sha:.0f} MB/s, {(1 << 30) / sha / 1e6:.2f} s per GiB. "
              f"A get hashes every byte twice (the node verifies each chunk, the client the whole file)")
        worst = max(max(b["peak_rss_mib"].values()) for b in bigs)
        print(f"peak node RSS during the big put: {worst:.0f} MiB (max over nodes and passes); "
              f"per pass: {[b['peak_rss_mib'] for b in bigs]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the large file (0: skip)")
    parser.add_argument("--dir", default=".", help="where the clusters and files go")
    parser.add_argument("--big-only", action="store_true", help="skip the small-file part")
    parser.add_argument("--tls", choices=("on", "off", "both"), default="on",
                        help="TLS on every port (the default, as scripts/cluster.sh runs), off, or "
                             "both: interleaved rounds, off and on, with their ratios")
    parser.add_argument("--encryption", choices=("on", "off", "both"), default="on",
                        help="encryption at rest (the dev cluster's default), off, or both, as for --tls")
    args = parser.parse_args()
    if args.tls == "both" and args.encryption == "both":
        parser.error("compare one thing at a time: --tls both or --encryption both")
    print(f"host: {cpu_flags()}")
    what = "tls" if args.tls == "both" else "encryption" if args.encryption == "both" else None
    if what is None:
        run_passes(lambda reactor, tmp: one_pass(reactor, args, tmp, tls=args.tls == "on",
                                                 encryption=args.encryption == "on"),
                   lambda passes: summarize(passes, args), args.repeats, "storg-file-bench-", args.dir)
        return
    rounds: list[int] = []

    async def pair(reactor: Any, tmp: Path) -> dict:
        first_on = len(rounds) % 2 == 1  # off-on, on-off, off-on, ...
        rounds.append(1)
        result = {}
        for on in (first_on, not first_on):
            sub = tmp / ("on" if on else "off")
            sub.mkdir()
            settings = {"tls": args.tls == "on", "encryption": args.encryption == "on", what: on}
            result["on" if on else "off"] = await one_pass(reactor, args, sub, **settings)
        return result

    run_passes(pair, lambda pairs: summarize_pairs(pairs, args, what), args.repeats,
               "storg-file-bench-", args.dir)


def tls_figures(p: dict, args: argparse.Namespace) -> dict[str, float]:
    """The throughput figures of one pass, by name (higher is better for each)."""
    figures = {}
    for size in [] if args.big_only else args.sizes:
        for clients in args.clients:
            puts, gets = p["small"][(size, clients)]
            figures[f"{size} B puts/s, {clients} clients"] = puts["ops"]
            figures[f"{size} B gets/s, {clients} clients"] = gets["ops"]
    if args.big_mb > 0:
        figures[f"{args.big_mb} MiB put MB/s"] = p["big"]["put_mbs"]
        figures[f"{args.big_mb} MiB get MB/s"] = p["big"]["get_mbs"]
    return figures


def summarize_pairs(pairs: list[dict], args: argparse.Namespace, what: str) -> None:
    label, goal = ("TLS", 0.85) if what == "tls" else ("encryption at rest", 0.90)
    print(f"storg file benchmark, {label} on vs off: {len(pairs)} rounds, each one pass of each, interleaved")
    print(f"ratio = {label} on / off, per round; the goal is at least {goal:.2f} on each figure")
    names = list(tls_figures(pairs[0]["off"], args))
    print(f"{'figure':>32} | {'median':>6} | rounds (off -> on)")
    for name in names:
        cells, ratios = [], []
        for pair in pairs:
            off, on = tls_figures(pair["off"], args)[name], tls_figures(pair["on"], args)[name]
            ratio = on / off if off else float("nan")
            ratios.append(ratio)
            cells.append(f"{off:.0f} -> {on:.0f} ({ratio:.2f})")
        print(f"{name:>32} | {statistics.median(ratios):>6.2f} | " + "; ".join(cells))
    print(f"CPU per operation over all processes, {label} off -> on, per round (less noisy than rates):")
    for name, cpu_off, cpu_on in cpu_pairs(pairs, args):
        cells = [f"{a:.3f} -> {b:.3f}" for a, b in zip(cpu_off, cpu_on, strict=True)]
        extra = statistics.median(b / a for a, b in zip(cpu_off, cpu_on, strict=True)) if cpu_off else float("nan")
        print(f"{name:>32} | x{extra:>5.2f} | " + "; ".join(cells))


def cpu_pairs(pairs: list[dict], args: argparse.Namespace) -> list[tuple[str, list[float], list[float]]]:
    """(figure, CPU per op off by round, on by round): ms per small operation, s per GiB for the big file."""
    rows = []
    for size in [] if args.big_only else args.sizes:
        for clients in args.clients:
            for index, op in enumerate(("put", "get")):
                name = f"{size} B {op} CPU ms, {clients} clients"
                rows.append((name, [p["off"]["small"][(size, clients)][index]["cpu_total"] for p in pairs],
                             [p["on"]["small"][(size, clients)][index]["cpu_total"] for p in pairs]))
    if args.big_mb > 0:
        for op in ("put", "get"):
            rows.append((f"{args.big_mb} MiB {op} CPU s per GiB",
                         [sum(p["off"]["big"][f"{op}_cpu_s_per_gib"].values()) for p in pairs],
                         [sum(p["on"]["big"][f"{op}_cpu_s_per_gib"].values()) for p in pairs]))
    return rows


if __name__ == "__main__":
    main()
