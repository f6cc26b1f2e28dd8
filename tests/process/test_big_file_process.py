"""A 1 GiB file through storgctl, streamed both ways, with every node's memory bounded."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

GIB = 1 << 30
BLOCK = 1 << 20
NODE_RSS_LIMIT_MIB = 150


def block(i: int) -> bytes:
    """Distinct, cheap blocks: no two chunks deduplicate."""
    return i.to_bytes(8, "big") * (BLOCK // 8)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_one_gib_round_trip_in_bounded_memory(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=3)
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        addresses = ",".join(n.client_address for n in cluster.nodes.values())
        expected = hashlib.sha256()
        put = subprocess.Popen([str(BIN / "storgctl"), "--cluster", addresses, "put", "-", "/big"],
                               env=cluster.env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

        def feed() -> None:
            for i in range(GIB // BLOCK):
                data = block(i)
                expected.update(data)
                put.stdin.write(data)
            put.stdin.close()

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(timeout=600)
        assert put.wait(timeout=600) == 0, put.stderr.read().decode()
        put.stderr.close()
        for nid, node in cluster.nodes.items():
            assert peak_rss_mib(node.proc.pid) < NODE_RSS_LIMIT_MIB, f"{nid} used too much memory"

        get = subprocess.Popen([str(BIN / "storgctl"), "--cluster", addresses, "get", "/big", "-"],
                               env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = hashlib.sha256()
        size = 0
        while chunk := get.stdout.read(BLOCK):
            got.update(chunk)
            size += len(chunk)
        assert get.wait(timeout=600) == 0, get.stderr.read().decode()
        get.stdout.close()
        get.stderr.close()
        assert size == GIB
        assert got.hexdigest() == expected.hexdigest()
    finally:
        cluster.close()


def test_a_chunk_corrupt_on_every_holder_stops_the_pipelined_get_before_it(tmp_path):
    """Gets read chunks ahead; a damaged one still reaches no client, nor does anything after it."""
    cluster = ProcCluster.create(tmp_path, size=3)
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        data = b"".join(block(i) for i in range(8))
        src = tmp_path / "src"
        src.write_bytes(data)
        assert cluster.storgctl("put", str(src), "/f").returncode == 0
        bad = hashlib.sha256(block(5)).hexdigest()
        for nid in cluster.nodes:
            path = cluster.chunk_path(nid, bad)
            damaged = bytearray(path.read_bytes())
            damaged[12345] ^= 0x40
            path.write_bytes(bytes(damaged))
        got = cluster.storgctl("get", "/f", "-")
        assert got.returncode == 4, got.stderr
        # What reached stdout is the file's first chunks, exactly, and none of the damaged one.
        assert len(got.stdout) <= 5 * BLOCK
        assert got.stdout == data[:len(got.stdout)]
        target = tmp_path / "out"
        assert cluster.storgctl("get", "/f", str(target)).returncode == 4
        assert not target.exists()
    finally:
        cluster.close()
