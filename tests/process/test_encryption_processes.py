"""Encryption at rest with real nodes (issue 16): nothing under a data_dir reveals a file, and a
node with a wrong, missing or exposed key refuses to start with one line naming the key file."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from storg.storage.keys import init_key_file, remove_key, rotate_key_file
from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process

CHUNK = 64 * 1024


def put(cluster: ProcCluster, remote: str, data: bytes) -> None:
    out = cluster.storgctl("put", "-", remote, input=data)
    assert out.returncode == 0, out.stderr


def get(cluster: ProcCluster, remote: str) -> bytes:
    out = cluster.storgctl("get", remote, "-")
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_twistd(cluster: ProcCluster, nid: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile", "", "storg", "--config", str(cluster.nodes[nid].config_path)],
        cwd=cluster.root, env=cluster.env, capture_output=True, timeout=60)


def all_up(cluster: ProcCluster) -> bool:
    rows = cluster.status()
    return len(rows) == len(cluster.nodes) and all(r["role"] != "unreachable" for r in rows)


def test_nothing_under_a_data_dir_reveals_a_file_its_path_or_its_sha256(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=3, files={"chunk_size": CHUNK},
                                 raft={"snapshot_every": 4})
    marker = b"MARKER-7f3a9c-" * 64
    big = (marker * (3 * CHUNK // len(marker) + 2))[:3 * CHUNK + 100]
    small = marker[:300]
    files = {"/secret-folder-q8z/big-marker-file": big, "/secret-folder-q8z/small-marker-file": small}
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        for remote, data in files.items():
            put(cluster, remote, data)
        for i in range(8):  # enough entries for a snapshot on every node
            put(cluster, f"/secret-folder-q8z/filler-{i}", small + bytes([i]))
        for remote, data in files.items():
            assert get(cluster, remote) == data
        wait_for(lambda: all(any((cluster.data_dir(n) / "snap").glob("*.snap")) for n in cluster.nodes),
                 30, "a snapshot on every node")
    finally:
        cluster.close()
    needles = [b"MARKER-7f3a9c", b"secret-folder-q8z", b"marker-file"]
    for data in (*files.values(), small + b"\x00"):
        digest = hashlib.sha256(data)
        needles += [digest.hexdigest().encode(), digest.digest()]
    chunk_hashes = [hashlib.sha256(big[i:i + CHUNK]).hexdigest() for i in range(0, len(big), CHUNK)]
    needles += [h.encode() for h in chunk_hashes] + [bytes.fromhex(h) for h in chunk_hashes]
    for nid in cluster.nodes:
        root = cluster.data_dir(nid)
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        for path in root.rglob("*"):
            assert not any(n.decode("latin-1") in path.name for n in needles), path
            if path.is_dir():
                continue
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            raw = path.read_bytes()
            for needle in needles:
                assert needle not in raw, (path, needle[:20])


def test_a_wrong_missing_or_exposed_key_is_refused_and_rotation_reencrypt_remove_keeps_every_file(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=3, files={"chunk_size": CHUNK})
    key = cluster.key_file
    original = key.read_bytes()
    data = {f"/r/{i}": os.urandom(CHUNK * 2 + i) for i in range(2)}
    data["/r/small"] = b"tiny"
    try:
        cluster.start_all()
        wait_for(cluster.leader, 30, "a leader")
        for remote, body in data.items():
            put(cluster, remote, body)
        victim = "n3"
        cluster.kill(victim, 15)
        wait_for(lambda: not cluster.nodes[victim].alive(), 30, f"{victim} to stop")

        def refused(expect: str) -> None:
            out = run_twistd(cluster, victim)
            lines = out.stderr.decode().strip().splitlines()
            assert out.returncode != 0 and len(lines) == 1, (out.returncode, lines)
            assert str(key) in lines[0] and expect in lines[0], lines

        key.unlink()
        refused("does not exist")
        init_key_file(key)  # another cluster's key
        refused("does not hold the cluster key")
        key.write_bytes(original)
        key.chmod(0o644)
        refused("readable by other users")
        key.chmod(0o600)
        # Rotate, restart every node with key 2 active, write more under it.
        rotate_key_file(key)
        cluster.start(victim)
        for nid in ("n1", "n2"):
            cluster.restart(nid, 15)
        wait_for(lambda: all_up(cluster), 60, "every node up after the rotation")
        data["/r/after"] = os.urandom(CHUNK + 7)
        put(cluster, "/r/after", data["/r/after"])
        for remote, body in data.items():
            assert get(cluster, remote) == body
        # Key 1 still seals older records: a node whose file lacks it refuses to start, naming it.
        cluster.kill(victim, 15)
        wait_for(lambda: not cluster.nodes[victim].alive(), 30, f"{victim} to stop")
        before = sorted(p.read_bytes() for p in cluster.data_dir(victim).rglob("*") if p.is_file())
        without_1 = key.read_bytes()
        remove_key(key, 1)
        refused("key id 1 not in key file")
        after = sorted(p.read_bytes() for p in cluster.data_dir(victim).rglob("*") if p.is_file())
        assert after == before  # nothing it could not read was rewritten
        key.write_bytes(without_1)
        cluster.start(victim)
        wait_for(lambda: all_up(cluster), 60, "every node back")
        # The re-encryption pass on every member; then key 1 can go and every node restarts.
        out = cluster.storgctl("keys", "reencrypt")
        assert out.returncode == 0 and b"re-encryption pass done" in out.stdout, out.stderr
        remove_key(key, 1)
        for nid in cluster.nodes:
            cluster.restart(nid, 15)
        wait_for(lambda: all_up(cluster), 60, "every node up without key 1")
        for remote, body in data.items():
            assert get(cluster, remote) == body
        for nid in cluster.nodes:
            assert "key id 1" not in cluster.log_text(nid).splitlines()[-1]
    finally:
        cluster.close()
