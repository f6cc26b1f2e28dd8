"""A put that streams for longer than ``orphan_grace_s`` keeps every copy of its early chunks
(issue 16, the first data-loss hole): a follower's orphan sweep asks the leader which chunk
files a live upload still holds, instead of trusting their age."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process

CHUNK = 64 * 1024
MIB = 1 << 20


def test_a_put_streaming_longer_than_the_orphan_grace_keeps_all_its_copies(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=3, files={
        "chunk_size": CHUNK, "orphan_grace_s": 1, "gc_interval_s": 0.3, "scrub_interval_s": 3600})
    data = os.urandom(3 * MIB + 5)
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        put = subprocess.Popen(
            [str(BIN / "storgctl"), "--cluster", ",".join(n.client_address for n in cluster.nodes.values()),
             "put", "-", "/slow"], env=cluster.env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert put.stdin is not None
        put.stdin.write(data[:2 * MIB + 1])  # the first pieces (the client reads 1 MiB at a time) go out now...
        put.stdin.flush()
        wait_for(lambda: all(len(cluster.chunk_files(n)) >= 3 for n in cluster.nodes), 30,
                 "the first chunks on every node")
        time.sleep(3)  # ...and wait several sweeps past the grace before the rest
        put.stdin.write(data[2 * MIB + 1:])
        put.stdin.close()
        assert put.wait(60) == 0, put.stderr.read() if put.stderr else ""
        info = json.loads(cluster.storgctl("--json", "stat", "/slow").stdout)
        for nid in cluster.nodes:
            here = cluster.chunk_files(nid)
            missing = [c["hash"][:12] for c in info["chunks"] if nid in c["holders"] and c["hash"] not in here]
            assert not missing, f"{nid} lost recorded copies {missing}"
        for nid in cluster.nodes:
            out = cluster.storgctl("get", "/slow", "-", nodes=[nid])
            assert out.returncode == 0 and out.stdout == data
    finally:
        cluster.close()
