"""Tree operations end to end on real nodes: put -r/get -r, a folder mv under readers, watch across a leader kill.

One module-scoped 3-node cluster (TLS, as users run it) for every test
here: the process lane's time budget is small.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process

CHUNK = 64 * 1024

MANY = 2_000
"""Files in the moved folder, put there with one ``put -r``.  The issue asks for 10,000: that
put -r takes about 17 s here (600 files/s on two shared cores), too much for the process
lane's budget; tests/fsm/test_fsm_tree.py moves 10,000 in the state machine itself."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    c = ProcCluster.create(root, size=3, files={"chunk_size": CHUNK, "gc_interval_s": 0.5})
    c.start_all()
    try:
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def ctl(cluster, *args, check=True, timeout=180, nodes=None):
    out = cluster.storgctl("--timeout", "30", *args, timeout=timeout, nodes=nodes)
    if check and out.returncode != 0:
        raise AssertionError(f"storgctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out


def test_mv_of_a_big_folder_is_seen_wholly_old_or_wholly_new(cluster, tmp_path):
    src = tmp_path / "many"
    for i in range(MANY):
        sub = src / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(b"%d" % i)
    started = time.monotonic()
    out = ctl(cluster, "--json", "put", "-r", "--jobs", "64", str(src), "/big/old")
    put_seconds = time.monotonic() - started
    summary = json.loads(out.stdout)
    assert summary["files"] == MANY and summary["failed"] == [], summary
    print(f"put -r of {MANY} files: {put_seconds:.1f} s ({MANY / put_seconds:.0f} files/s)")

    listings: list[list[str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = ctl(cluster, "--json", "ls", "/big", check=False, timeout=60)
            if got.returncode == 0:
                listings.append([f["path"] for f in json.loads(got.stdout)])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(listings) >= 2, 60, "listings before the mv")
        started = time.monotonic()
        moved = json.loads(ctl(cluster, "--json", "mv", "/big/old", "/big/new").stdout)
        mv_seconds = time.monotonic() - started
        seen = len(listings)
        wait_for(lambda: len(listings) >= seen + 2, 60, "listings after the mv")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert moved["files"] == MANY
    print(f"mv of {MANY} files: {mv_seconds:.2f} s (one storgctl, process start included)")
    old = sorted(p.replace("/big/new/", "/big/old/") for p in listings[-1])
    kinds = set()
    for listing in listings:
        assert len(listing) == MANY
        prefixes = {p.split("/")[2] for p in listing}
        assert len(prefixes) == 1, f"a listing mixes the old and the new tree: {sorted(prefixes)}"
        kinds |= prefixes
        assert sorted(p.replace("/big/new/", "/big/old/") for p in listing) == old
    assert kinds == {"old", "new"}
    # A mv onto an existing file is refused; a folder into itself is a usage error.
    ctl(cluster, "put", "-", "/big/file")
    assert ctl(cluster, "mv", "/big/new/d0/f00000", "/big/file", check=False).returncode == 1
    assert ctl(cluster, "mv", "/big/new", "/big/new/inside", check=False).returncode == 2


def test_put_r_get_r_cp_and_rm_r(cluster, tmp_path):
    src = tmp_path / "src"
    files = {"empty": b"", "a/b/c/d/deep": b"deep", "\u00e9t\u00e9/\u2603": b"snow",
             "big.bin": os.urandom(3 * 1024 * 1024 + 7)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "link").symlink_to(src / "empty")
    out = ctl(cluster, "put", "-r", str(src), "/rt")
    assert "skipped" in out.stderr.decode() and "link" in out.stderr.decode()
    ctl(cluster, "cp", "-r", "/rt", "/rt-copy")
    ctl(cluster, "rm", "-r", "/rt")
    assert ctl(cluster, "--json", "ls", "/rt").stdout.strip() == b"[]"
    dst = tmp_path / "dst"
    summary = json.loads(ctl(cluster, "--json", "get", "-r", "/rt-copy", str(dst)).stdout)
    assert summary["files"] == len(files)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data
    dry = ctl(cluster, "rm", "-r", "--dry-run", "/rt-copy").stdout.decode().splitlines()
    assert sorted(dry) == sorted("/rt-copy/" + rel for rel in files)


def chunk_files(cluster, hashes):
    """The chunk files of ``hashes`` on every node's disk (keyed names when the cluster encrypts)."""
    paths = [cluster.chunk_path(n, h) for n in cluster.nodes for h in hashes]
    return [p for p in paths if p.exists()]


def test_cp_then_rm_of_the_source_keeps_the_shared_chunks_until_the_last_reference_goes(cluster):
    data = os.urandom(5 * CHUNK + 3)
    cluster.storgctl("put", "-", "/gc/orig", input=data)
    hashes = [c["hash"] for c in json.loads(ctl(cluster, "--json", "stat", "/gc/orig").stdout)["chunks"]]
    assert len(hashes) == 6 and len(chunk_files(cluster, hashes)) == 18
    ctl(cluster, "cp", "/gc/orig", "/gc/copy")
    ctl(cluster, "rm", "/gc/orig")
    # A decoy removed after the original: once its chunks are gone, collection has run since.
    cluster.storgctl("put", "-", "/gc/decoy", input=os.urandom(2 * CHUNK))
    decoy = [c["hash"] for c in json.loads(ctl(cluster, "--json", "stat", "/gc/decoy").stdout)["chunks"]]
    ctl(cluster, "rm", "/gc/decoy")
    wait_for(lambda: not chunk_files(cluster, decoy), 30, "the decoy's chunks collected")
    assert len(chunk_files(cluster, hashes)) == 18, "a chunk still referenced by the copy was collected"
    assert ctl(cluster, "get", "/gc/copy", "-").stdout == data
    ctl(cluster, "rm", "/gc/copy")
    wait_for(lambda: not chunk_files(cluster, hashes), 30, "the chunks collected after the last rm")


def test_if_absent_puts_race_and_one_wins(cluster):
    results = []

    def attempt(i: int) -> None:
        out = cluster.storgctl("put", "--if-absent", "-", "/race/lock", input=b"%d" % i, timeout=60)
        results.append((out.returncode, out.stderr.decode()))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1, 1, 1], results
    assert all("already exists" in err for code, err in results if code == 1)


def test_watch_across_a_leader_kill_loses_and_repeats_nothing(cluster, tmp_path):
    leader = cluster.leader()
    assert leader is not None
    order = [leader] + [n for n in cluster.nodes if n != leader]
    start = max(r["applied_index"] for r in cluster.status()) + 1
    env = dict(cluster.env)
    addresses = ",".join(cluster.nodes[n].client_address for n in order)
    puts = 30
    watch = subprocess.Popen(
        [str(BIN / "storgctl"), "--cluster", addresses, "--timeout", "30", "--json", "watch", "/watched",
         "--from", str(start), "--limit", str(puts)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    versions = {}
    try:
        for i in range(puts):
            if i == puts // 2:
                cluster.kill(leader)
                wait_for(lambda: cluster.leader(among=order[1:]), 30, "a new leader")
            path = f"/watched/f{i:02d}"
            out = cluster.storgctl("--timeout", "30", "--json", "put", "-", path, input=b"x%d" % i,
                                   nodes=[n for n in order if cluster.nodes[n].alive()], timeout=60)
            assert out.returncode == 0, out.stderr.decode()
            versions[path] = json.loads(out.stdout)["version"]
        stdout, stderr = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        cluster.start(leader)
    assert watch.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    # Exactly the puts, each once, in log order, each with the index of its entry.
    assert [(e["path"], e["index"], e["kind"]) for e in events] == \
        sorted(((p, v, "create") for p, v in versions.items()), key=lambda t: t[1])
    wait_for(cluster.everyone_follows, 60, "the killed node back")


def test_put_r_with_the_leader_killed_midway_completes_when_run_again(cluster, tmp_path):
    src = tmp_path / "tree"
    # Small files travel in batches of up to 1 MiB (a few hundred files each), one at a time with
    # --jobs 1: 8,000 files are some thirty batches, so the kill lands midway; every 50th file is
    # over the inline size and goes as an ordinary put.
    files = {f"d{i % 7}/sub/f{i:04d}": os.urandom(5000 if i % 50 == 0 else 100 + i * 37 % 4000)
             for i in range(8000)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    leader = cluster.leader()
    assert leader is not None
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    first = subprocess.Popen(
        [str(BIN / "storgctl"), "--cluster", addresses, "--timeout", "30", "--json", "put", "-r",
         "--jobs", "1", str(src), "/killed"], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        others = [n for n in cluster.nodes if n != leader]

        stored = [0]

        def some_stored() -> bool:
            out = cluster.storgctl("--timeout", "5", "--json", "ls", "--stale", "/killed", nodes=others)
            stored[0] = len(json.loads(out.stdout)) if out.returncode == 0 else 0
            return stored[0] >= 40

        wait_for(some_stored, 60, "part of the tree stored")
        cluster.kill(leader)
        assert first.poll() is None and stored[0] < len(files), "the kill came after the put -r ended"
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        cluster.start(leader)
    # The first run either rode out the election (exit 0) or gave some files up (exit 3).
    assert first.returncode in (0, 3), err.decode()
    summary = json.loads(ctl(cluster, "--json", "put", "-r", str(src), "/killed").stdout)
    assert summary["files"] == len(files) and summary["failed"] == []
    dst = tmp_path / "back"
    ctl(cluster, "get", "-r", "/killed", str(dst))
    assert {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()} == files
    wait_for(cluster.everyone_follows, 60, "the killed node back")
