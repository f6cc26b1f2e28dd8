"""Placement, repair, scrub and garbage collection with real nodes (issue 6), scaled down.

Chunks are 64 KiB, graces and intervals a few seconds or less; copies are
counted as chunk files in the nodes' data_dirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
from collections import Counter

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

CHUNK = 64 * 1024
HASH = re.compile(r"^[0-9a-f]{64}$")

FAST = {
    "chunk_size": CHUNK, "replication_factor": 3, "repair_grace_s": 3, "repair_interval_s": 1,
    "orphan_grace_s": 3, "gc_interval_s": 1, "scrub_interval_s": 3600, "scrub_rate_mb_s": 50,
}

CLIENT_SCRIPT = r"""
import hashlib, io, json, random, sys, time
from twisted.internet import defer, task
from storg.client.api import StorgClient
from storg.net.credentials import from_environment

args = json.loads(sys.stdin.read())

async def stat_many(client):
    out = {}
    for path in args["paths"]:
        info = await client.stat(path)
        out[path] = [[c.hash, sorted(c.holders), c.size] for c in info.chunks]
    return out

async def race(client_factory):
    variants = [bytes.fromhex(v) for v in args["variants"]]
    alive, errors = {}, []
    deadline = time.monotonic() + args["seconds"]
    ops = 0

    async def one(cid):
        nonlocal ops
        client = client_factory()
        rng = random.Random(cid)
        i = 0
        try:
            while time.monotonic() < deadline:
                path = f"/race/{cid}/{i % 3}"
                i += 1
                ops += 1
                if rng.random() < 0.4:
                    try:
                        await client.rm(path)
                    except Exception as exc:
                        if type(exc).__name__ != "NotFoundError":
                            errors.append(f"rm {path}: {exc!r}")
                            continue
                    alive.pop(path, None)
                    continue
                data = rng.choice(variants)
                try:
                    await client.put(io.BytesIO(data), path)
                except Exception as exc:
                    errors.append(f"put {path}: {exc!r}")
                    continue
                alive[path] = hashlib.sha256(data).hexdigest()
        finally:
            client.close()

    await defer.gatherResults([defer.Deferred.fromCoroutine(one(c)) for c in range(args["clients"])])
    client = client_factory()
    bad = []
    for path, sha in sorted(alive.items()):
        sink = io.BytesIO()
        try:
            await client.get(path, sink)
        except Exception as exc:
            bad.append(f"get {path}: {exc!r}")
            continue
        if hashlib.sha256(sink.getvalue()).hexdigest() != sha:
            bad.append(f"get {path}: wrong content")
    listed = sorted(f.path for f in await client.ls("/race"))
    client.close()
    return {"alive": alive, "errors": errors, "bad": bad, "listed": listed, "ops": ops}

async def main(reactor):
    make = lambda: StorgClient(args["cluster"], reactor=reactor, timeout=30, tls=from_environment())
    if args["mode"] == "stat":
        client = make()
        try:
            result = await stat_many(client)
        finally:
            client.close()
    else:
        result = await race(make)
    print(json.dumps(result))

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


def run_client(cluster, nodes=None, **args):
    """The client library in one process: many operations for one interpreter start."""
    args["cluster"] = [cluster.nodes[n].client_address for n in (nodes or cluster.nodes)]
    out = subprocess.run([str(BIN / "python"), "-c", CLIENT_SCRIPT], input=json.dumps(args).encode(),
                         env=cluster.env, capture_output=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"client script failed: {out.stderr.decode()[-2000:]}")
    return json.loads(out.stdout)


def start_cluster(root, size, files):
    c = ProcCluster.create(root, size=size, files=files)
    c.start_all()
    try:
        # Every node up, not just a quorum: the leader's placement puts a node it could
        # not probe last, so a node still starting would skew the spread checked below.
        wait_for(c.everyone_follows, 30, "a leader followed by every node")
        # The leader's placement puts a member its last probe could not reach last; it logs
        # each change of that set, so wait until it has seen every member answer.
        everyone = f"repair: all {size} members reachable"
        leader = wait_for(c.leader, 30, "a leader")
        wait_for(lambda: everyone in c.log_text(leader), 30, f"{leader}'s probes to reach every member")
    except BaseException:
        c.close()
        raise
    return c


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("repair5"), 5, FAST)
    try:
        yield c
    finally:
        c.close()


def ctl(cluster, *args, input=None, check=True, nodes=None, timeout=120):
    out = cluster.storgctl("--timeout", "30", *args, input=input, nodes=nodes, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"storgctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out


def stat(cluster, remote, nodes=None):
    return json.loads(ctl(cluster, "--json", "stat", remote, nodes=nodes).stdout)


def copies_on_disk(cluster, nodes=None) -> dict[str, list[str]]:
    """chunk hash -> the nodes with a file of it in their chunk store."""
    found: dict[str, list[str]] = {}
    for nid in nodes or cluster.nodes:
        for h in cluster.chunk_files(nid):
            found.setdefault(h, []).append(nid)
    return found


def chunk_holders(cluster, paths, nodes=None) -> dict[str, list[str]]:
    """chunk hash -> its recorded holders, over the files at ``paths``."""
    found = run_client(cluster, nodes, mode="stat", paths=list(paths))
    return {h: holders for chunks in found.values() for h, holders, _size in chunks}


def chunk_sizes(cluster, paths, nodes=None) -> dict[str, int]:
    """chunk hash -> its size in bytes, over the files at ``paths``."""
    found = run_client(cluster, nodes, mode="stat", paths=list(paths))
    return {h: size for chunks in found.values() for h, _holders, size in chunks}


def test_three_copies_of_each_chunk_spread_evenly_and_any_node_serves_any_file(five):
    contents = {f"/spread/{i}": os.urandom(random.Random(i).randrange(6 * CHUNK, 12 * CHUNK))
                for i in range(4)}
    contents["/spread/small"] = b"tiny file riding in its log entry"
    for path, data in contents.items():
        ctl(five, "put", "-", path, input=data)
    holders = chunk_holders(five, contents)
    assert all(len(h) == 3 for h in holders.values())

    def exactly_three():
        disk = copies_on_disk(five)
        return all(sorted(disk.get(h, [])) == hs for h, hs in holders.items())

    wait_for(exactly_three, 20, "exactly the recorded three copies of each chunk on disk")
    per_node = Counter(n for hs in holders.values() for n in hs)
    assert set(per_node) == set(five.nodes)
    # Placement evens out bytes, not chunk counts (each file's last chunk is short):
    # greedy least-used placement keeps any two nodes within about a chunk of each other.
    sizes = chunk_sizes(five, contents)
    held = Counter()
    for h, hs in holders.items():
        for n in hs:
            held[n] += sizes[h]
    assert max(held.values()) - min(held.values()) <= 2 * CHUNK, (held, per_node)
    paths = sorted(contents)
    for i, nid in enumerate(sorted(five.nodes)):
        path = paths[i % len(paths)]
        out = five.storgctl("get", path, "-", nodes=[nid])
        assert out.returncode == 0 and out.stdout == contents[path], (nid, path, out.stderr)


def test_a_corrupt_copy_is_never_served_and_scrub_replaces_it(five):
    data = os.urandom(2 * CHUNK)
    ctl(five, "put", "-", "/scrub/me", input=data)
    chunk = stat(five, "/scrub/me")["chunks"][0]
    victim = chunk["holders"][0]
    path = five.chunk_path(victim, chunk["hash"])
    wait_for(path.is_file, 10, "the victim's copy")
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x40
    path.write_bytes(bytes(raw))
    out = five.storgctl("get", "/scrub/me", "-", nodes=[victim])
    assert out.returncode == 0 and out.stdout == data

    rows = json.loads(ctl(five, "--json", "scrub", "--start").stdout)
    assert sorted(r["id"] for r in rows) == sorted(five.nodes)

    def repaired():
        rows = {r["id"]: r for r in json.loads(ctl(five, "--json", "scrub").stdout)}
        row = rows[victim]
        return row["bad_copies"] >= 1 and row["repairs_done"] >= 1 and not row["scrubbing"] and row

    row = wait_for(repaired, 30, "scrub to find and replace the bad copy")
    assert row["chunks_checked"] >= 1
    assert hashlib.sha256(five.read_chunk(victim, chunk["hash"])).hexdigest() == chunk["hash"]
    table = ctl(five, "scrub").stdout.decode()
    assert "UNDER_REPLICATED" in table.splitlines()[0]


def test_racing_deletes_and_puts_of_identical_content_lose_no_acknowledged_file(five):
    shared = os.urandom(2 * CHUNK)
    variants = [(shared + bytes([i]) * 100).hex() for i in range(3)] + [b"small and shared".hex()]
    result = run_client(five, mode="race", seconds=6, clients=4, variants=variants)
    assert not result["errors"], result["errors"][:3]
    assert result["ops"] > 40 and result["alive"]
    assert not result["bad"], result["bad"][:3]
    assert result["listed"] == sorted(result["alive"])
    path, sha = sorted(result["alive"].items())[0]
    out = five.storgctl("get", path, "-")
    assert out.returncode == 0 and hashlib.sha256(out.stdout).hexdigest() == sha


def test_a_node_down_past_the_grace_is_replaced_and_its_copies_collected_later(five):
    data = {f"/lost/{i}": os.urandom(4 * CHUNK + i) for i in range(3)}
    for path, content in data.items():
        ctl(five, "put", "-", path, input=content)
    leader = five.leader()
    before = chunk_holders(five, data)
    victim = Counter(n for hs in before.values() for n in hs if n != leader).most_common(1)[0][0]
    five.kill(victim)
    live = [n for n in five.nodes if n != victim]

    def replaced():
        now = chunk_holders(five, data, nodes=live)
        return all(len(hs) == 3 and victim not in hs for hs in now.values()) and now

    after = wait_for(replaced, 60, f"the chunks of {victim} to be copied elsewhere")
    disk = copies_on_disk(five, live)
    for h, hs in after.items():
        assert sorted(disk[h]) == hs
    for path, content in data.items():
        out = five.storgctl("get", path, "-", nodes=live)
        assert out.returncode == 0 and out.stdout == content

    five.start(victim)

    def back_to_three():
        disk = copies_on_disk(five)
        return all(sorted(disk.get(h, [])) == hs for h, hs in after.items())

    wait_for(back_to_three, 60, f"{victim}'s stale copies to be collected")


# -- a holder killed during a put comes back and gets the copies it missed --------------


def test_a_holder_killed_during_a_put_gets_its_copies_after_restart(tmp_path):
    files = dict(FAST, repair_grace_s=600)
    c = start_cluster(tmp_path, 3, files)
    try:
        leader = c.leader()
        victim = next(n for n in c.nodes if n != leader)
        src = tmp_path / "big.bin"
        data = os.urandom(160 * CHUNK)
        src.write_bytes(data)
        proc = subprocess.Popen(
            [str(BIN / "storgctl"), "--cluster", ",".join(n.client_address for n in c.nodes.values()),
             "--timeout", "60", "put", str(src), "/during"],
            env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: len(copies_on_disk(c, [victim])) >= 4, 30, "the upload to reach the victim")
        c.kill(victim, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        holders = chunk_holders(c, ["/during"])
        assert any(victim not in hs for hs in holders.values())
        assert all(len(hs) >= 2 for hs in holders.values())
        c.start(victim)

        def repaired():
            now = chunk_holders(c, ["/during"])
            disk = copies_on_disk(c)
            return all(len(hs) == 3 and sorted(disk.get(h, [])) == hs for h, hs in now.items())

        wait_for(repaired, 60, "the missed copies to be repaired")
        out = c.storgctl("get", "/during", "-", nodes=[victim])
        assert out.returncode == 0 and out.stdout == data
    finally:
        c.close()
