"""Snapshots end to end: real nodes with a small snapshot_every, driven by storgctl."""

from __future__ import annotations

import json
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from storg.testing.devcluster import ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

EVERY = 5


@pytest.fixture
def cluster(tmp_path):
    c = ProcCluster.create(tmp_path, size=3, raft={"snapshot_every": EVERY})
    c.start_all()
    try:
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def ctl(cluster, *args, nodes=None, input=None):
    out = cluster.storgctl("--timeout", "30", *args, nodes=nodes, input=input, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"storgctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out


def put_many(cluster, names, nodes=None):
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: ctl(cluster, "put", "-", name, nodes=nodes,
                                       input=name.encode() * 3), names))


def applied(cluster, nid):
    rows = [r for r in cluster.status(nodes=[nid]) if r["id"] == nid]
    return rows[0]["applied_index"] if rows and rows[0]["role"] != "unreachable" else -1


def recorded_on(cluster, nid, names):
    """The chunk hashes whose recorded holders (``stat``) include ``nid``, over ``names``."""
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(lambda name: json.loads(ctl(cluster, "--json", "stat", name).stdout), names))
    return {c["hash"] for info in infos for c in info["chunks"] if nid in c["holders"]}


def chunk_files(cluster, nid):
    return set(cluster.chunk_files(nid))


def test_a_follower_away_while_the_log_was_compacted_catches_up_by_snapshot(cluster):
    put_many(cluster, [f"/before/{i}" for i in range(3)])
    leader = cluster.leader()
    away = next(n for n in cluster.nodes if n != leader)
    live = [n for n in cluster.nodes if n != away]
    assert cluster.kill(away, signal.SIGTERM) == 0
    put_many(cluster, [f"/while-away/{i}" for i in range(2 * EVERY + 1)], nodes=live)
    wait_for(lambda: "wrote a snapshot at index" in cluster.log_text(leader), 30, "a snapshot on the leader")
    cluster.start(away)
    target = applied(cluster, leader)
    wait_for(lambda: applied(cluster, away) >= target, 60, f"{away} catching up to index {target}")
    text = cluster.log_text(away)
    assert re.search(r"installed the leader's snapshot at index \d+", text), text[-3000:]
    assert "staged the snapshot at index" in text  # verified and durable, adopted by the core next
    assert "sent the snapshot at index" in cluster.log_text(leader)
    out = ctl(cluster, "get", "/while-away/7", "-", nodes=[away])
    assert out.stdout == b"/while-away/7" * 3
    # The small files put while it was away name it as a holder (placement picks every
    # voter with R = 3) but came in the snapshot, not as entries it applied: it fetches them.
    mine = recorded_on(cluster, away, [f"/while-away/{i}" for i in range(2 * EVERY + 1)])
    assert len(mine) == 2 * EVERY + 1
    wait_for(lambda: mine <= chunk_files(cluster, away), 60, f"{away} to hold every chunk recorded on it")
    assert re.search(r"fill: \S+ fetched [1-9]\d* missing chunks", cluster.log_text(away))


def test_restarting_every_node_restores_from_snapshot_and_log_tail(cluster):
    names = [f"/restart/{i}" for i in range(EVERY + 3)]
    put_many(cluster, names)
    for nid in cluster.nodes:
        wait_for(lambda nid=nid: "wrote a snapshot at index" in cluster.log_text(nid), 30, f"a snapshot on {nid}")
    for nid in cluster.nodes:
        assert cluster.kill(nid, signal.SIGTERM) == 0
    cluster.start_all()
    wait_for(cluster.leader, 30, "a leader after the restart")
    for nid in cluster.nodes:
        starts = re.findall(r"started in (\d+) ms: .* snapshot at index (\d+) \+ (\d+) log entries",
                            cluster.log_text(nid))
        assert len(starts) == 2, cluster.log_text(nid)[-3000:]
        assert int(starts[-1][1]) >= EVERY  # restored from a snapshot
    listed = ctl(cluster, "ls", "/restart").stdout.decode().splitlines()
    assert len(listed) == len(names)
    for nid in cluster.nodes:
        assert ctl(cluster, "get", names[-1], "-", nodes=[nid]).stdout == names[-1].encode() * 3
