"""The file store end to end: real nodes, real storgctl, the guarantees of README.rst, "Guarantees"."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    c = ProcCluster.create(root, size=3, files={"chunk_size": CHUNK})
    c.start_all()
    try:
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def ctl(cluster, *args, input=None, check=True, timeout=120):
    out = cluster.storgctl("--timeout", "30", *args, input=input, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"storgctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out


def put_bytes(cluster, remote, data, **kw):
    return ctl(cluster, "put", "-", remote, input=data, **kw)


def get_bytes(cluster, remote, *extra, **kw):
    return ctl(cluster, "get", *extra, remote, "-", **kw).stdout


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
def test_round_trip_of_edge_sizes(cluster, size):
    data = os.urandom(size)
    put_bytes(cluster, f"/sizes/{size}", data)
    assert get_bytes(cluster, f"sizes/{size}") == data
    info = json.loads(ctl(cluster, "--json", "stat", f"/sizes/{size}").stdout)
    assert info["size"] == size
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(info["chunks"]) == -(-size // CHUNK)
    for chunk in info["chunks"]:
        assert sorted(chunk["holders"]) == ["n1", "n2", "n3"]


def test_get_from_every_node_and_stale_reads(cluster):
    data = b"visible everywhere"
    put_bytes(cluster, "/everywhere", data)
    for nid in cluster.nodes:
        out = cluster.storgctl("get", "/everywhere", "-", nodes=[nid])
        assert out.returncode == 0 and out.stdout == data
        out = cluster.storgctl("get", "--stale", "/everywhere", "-", nodes=[nid])
        assert out.returncode == 0


def test_put_and_get_through_files_and_an_existing_local_file_survives_a_failed_get(cluster, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * CHUNK + 5))
    ctl(cluster, "put", str(src), "/local/a")
    dst = tmp_path / "dst.bin"
    ctl(cluster, "get", "/local/a", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    dst.write_bytes(b"keep me")
    out = ctl(cluster, "get", "/local/missing", str(dst), check=False)
    assert out.returncode == 1
    assert dst.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


def test_ls_prints_size_time_and_path_and_json(cluster):
    put_bytes(cluster, "/ls/x/one", b"1")
    put_bytes(cluster, "/ls/x/two", b"22")
    put_bytes(cluster, "/ls/xy", b"333")
    lines = ctl(cluster, "ls", "/ls/x").stdout.decode().splitlines()
    assert len(lines) == 2
    for line, (size, path) in zip(lines, [("1", "/ls/x/one"), ("2", "/ls/x/two")], strict=True):
        fields = line.split()
        assert fields[0] == size and fields[-1] == path
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", fields[1])
    listed = json.loads(ctl(cluster, "--json", "ls", "ls").stdout)
    assert [f["path"] for f in listed] == ["/ls/x/one", "/ls/x/two", "/ls/xy"]
    assert set(listed[0]) >= {"path", "size", "sha256", "modified"}


def test_rm_then_get_is_refused_and_rm_of_a_missing_file_exits_1(cluster):
    put_bytes(cluster, "/rm/me", b"bye")
    ctl(cluster, "rm", "/rm/me")
    out = ctl(cluster, "get", "/rm/me", "-", check=False)
    assert out.returncode == 1 and out.stderr.startswith(b"storgctl: ")
    assert ctl(cluster, "rm", "/rm/me", check=False).returncode == 1


@pytest.mark.parametrize("bad", ["/a/../b", "a//b", "/a/./b", "/x/", "/" + "x" * 4097])
def test_invalid_paths_exit_2(cluster, bad):
    out = ctl(cluster, "put", "-", bad, input=b"x", check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(b"storgctl: ")


def test_concurrent_writers_to_one_path_one_wins_whole(cluster):
    payloads = [bytes([i]) * (2 * CHUNK + i) for i in range(4)]
    results = []

    def writer(data):
        results.append(put_bytes(cluster, "/race", data, check=False).returncode)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0, 0, 0]
    assert get_bytes(cluster, "/race") in payloads


def test_overwrite_is_atomic_for_readers(cluster):
    old, new = b"o" * (3 * CHUNK), b"n" * (4 * CHUNK)
    put_bytes(cluster, "/atomic", old)
    seen = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            out = cluster.storgctl("get", "/atomic", "-")
            if out.returncode == 0:
                seen.append(out.stdout)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(3):
            put_bytes(cluster, "/atomic", new)
            put_bytes(cluster, "/atomic", old)
    finally:
        stop.set()
        t.join()
    assert seen and all(s in (old, new) for s in seen)


def test_a_corrupt_chunk_on_one_node_is_never_served(cluster):
    data = os.urandom(CHUNK)
    put_bytes(cluster, "/corrupt/one", data)
    info = json.loads(ctl(cluster, "--json", "stat", "/corrupt/one").stdout)
    h = info["chunks"][0]["hash"]
    victim = "n1"
    path = cluster.chunk_path(victim, h)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    out = cluster.storgctl("get", "/corrupt/one", "-", nodes=[victim])
    assert out.returncode == 0 and out.stdout == data


def test_a_chunk_corrupt_on_every_holder_exits_4(cluster):
    data = os.urandom(CHUNK)
    put_bytes(cluster, "/corrupt/all", data)
    h = json.loads(ctl(cluster, "--json", "stat", "/corrupt/all").stdout)["chunks"][0]["hash"]
    for nid in cluster.nodes:
        path = cluster.chunk_path(nid, h)
        raw = bytearray(path.read_bytes())
        raw[0] ^= 0x01
        path.write_bytes(bytes(raw))
    out = ctl(cluster, "get", "/corrupt/all", "-", check=False)
    assert out.returncode == 4, out.stderr
    assert data not in out.stdout


def test_status_shows_every_member(cluster):
    rows = json.loads(ctl(cluster, "--json", "status").stdout)
    assert sorted(r["id"] for r in rows) == ["n1", "n2", "n3"]
    assert set(rows[0]) == {"id", "role", "term", "leader", "commit_index", "applied_index", "last_index"}


# -- faults: these stop nodes, so each gets a cluster of its own --------------------


@pytest.fixture
def fresh(tmp_path):
    c = ProcCluster.create(tmp_path, size=3, files={"chunk_size": CHUNK})
    c.start_all()
    try:
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def test_a_holder_down_during_a_put(fresh):
    leader = fresh.leader()
    down = next(n for n in fresh.nodes if n != leader)
    fresh.kill(down)
    data = os.urandom(3 * CHUNK)
    put_bytes(fresh, "/down", data)
    info = json.loads(ctl(fresh, "--json", "stat", "/down").stdout)
    for chunk in info["chunks"]:
        assert down not in chunk["holders"] and len(chunk["holders"]) == 2
    live = [n for n in fresh.nodes if n != down]
    out = fresh.storgctl("get", "/down", "-", nodes=live)
    assert out.returncode == 0 and out.stdout == data


def test_leader_killed_mid_upload_never_shows_a_partial_file(fresh, tmp_path):
    leader = fresh.leader()
    src = tmp_path / "big.bin"
    data = os.urandom(400 * CHUNK)
    src.write_bytes(data)
    proc = subprocess.Popen(
        [str(BIN / "storgctl"), "--cluster",
         ",".join(n.client_address for n in fresh.nodes.values()),
         "--timeout", "30", "put", str(src), "/mid"],
        env=fresh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def upload_started():
        return any(p.is_file() and p.parent.name != "tmp"
                   for n in fresh.nodes for p in (fresh.data_dir(n) / "chunks").rglob("*"))

    wait_for(upload_started, 30, "the upload to start")
    fresh.kill(leader, signal.SIGKILL)
    code = proc.wait(timeout=120)
    proc.stdout.close()
    proc.stderr.close()
    assert code in (0, 3)
    live = [n for n in fresh.nodes if n != leader]
    out = fresh.storgctl("--timeout", "30", "get", "/mid", "-", nodes=live)
    if code == 0:
        assert out.returncode == 0 and out.stdout == data
    else:
        assert out.returncode == 1 or out.stdout == data
