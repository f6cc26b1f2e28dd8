"""S3 access keys, ETags, 4 KiB paths and resumed streams on a real TLS cluster (issue 18).

Three ``twistd storg`` nodes with ProcCluster's certificates: keys are
created, listed (never their secrets) and revoked through Raft by an
admin; a readwrite user is refused all three; the keys survive a restart
of every node (WAL and snapshot).  A file put with storgctl has the MD5 of
its content as its ETag, and a 4,096-byte path is stored while one byte
more is refused.  A client's ``get_stream`` whose node is killed midway
resumes on another node at the next offset, and a ``put_stream`` of that
file commits it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcCluster.create(tmp_path_factory.mktemp("s3keys"), size=3, raft={"snapshot_every": 20},
                           files={"chunk_size": 64 * 1024})
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        yield c
    finally:
        c.close()


def ctl(cluster: ProcCluster, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return cluster.storgctl("--timeout", "30", *args, input=input)


def run_as(cluster: ProcCluster, env: dict, *args: str) -> subprocess.CompletedProcess:
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    return subprocess.run([str(BIN / "storgctl"), "--cluster", addresses, "--timeout", "20", *args],
                          env=env, capture_output=True, timeout=60)


def test_keys_are_created_listed_and_revoked_by_an_admin_only(cluster):
    out = ctl(cluster, "--json", "s3", "key", "create", "backup", "--role", "readwrite")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["role"] == "readwrite" and len(made["secret"]) == 40 and made["id"].isalnum()
    text = ctl(cluster, "s3", "key", "create", "ops", "--role", "admin")
    assert text.returncode == 0 and b"secret access key: " in text.stdout, text.stderr
    listed = ctl(cluster, "--json", "s3", "key", "list")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["name"] for r in rows} == {"backup", "ops"} and all(set(r) == {"id", "name", "role", "created"}
                                                                 for r in rows)
    assert made["secret"].encode() not in listed.stdout
    plain = ctl(cluster, "s3", "key", "list")
    assert plain.stdout.startswith(b"ID") and made["id"].encode() in plain.stdout
    writer = cluster.add_client("writer", "readwrite")
    for args in (("s3", "key", "list"), ("s3", "key", "revoke", made["id"]),
                 ("s3", "key", "create", "x", "--role", "admin")):
        refused = run_as(cluster, writer, *args)
        assert refused.returncode == 1 and b"permission denied" in refused.stderr, (args, refused.stderr)
    # Entries enough for a snapshot, then every node restarted: the keys are still there.
    for i in range(25):
        assert ctl(cluster, "put", "-", f"/fill/{i}", input=b"x").returncode == 0
    for nid in list(cluster.nodes):
        cluster.restart(nid)
    wait_for(cluster.leader, 60, "a leader after the restarts", 0.2)
    again = json.loads(ctl(cluster, "--json", "s3", "key", "list").stdout)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    revoked = ctl(cluster, "s3", "key", "revoke", made["id"])
    assert revoked.returncode == 0 and b"revoked" in revoked.stdout, revoked.stderr
    assert made["id"] not in [r["id"] for r in json.loads(ctl(cluster, "--json", "s3", "key", "list").stdout)]
    twice = ctl(cluster, "s3", "key", "revoke", made["id"])
    assert twice.returncode == 1 and b"no S3 key" in twice.stderr


STREAM_SCRIPT = r"""
import hashlib, json, os, signal, sys
from twisted.internet import defer, task
from storg.client.api import StorgClient
from storg.net.credentials import from_environment

args = json.loads(sys.stdin.read())

async def main(reactor):
    client = StorgClient(args["cluster"], reactor=reactor, timeout=30, tls=from_environment())
    out = {"starts": 0}
    got = []
    try:
        stream = client.put_stream("/stream/big", size=args["size"])
        data = os.urandom(args["size"])
        for pos in range(0, len(data), 100_000):
            await stream.write(data[pos:pos + 100_000])
        info = await stream.finish()
        out["put_sha"] = info.sha256 == hashlib.sha256(data).hexdigest()
        out["etag"] = info.attrs.etag == hashlib.md5(data).hexdigest()

        def write(piece):
            got.append(piece)
            if len(got) == 3:  # the node serving the get dies after three chunks
                os.kill(args["pids"][args["cluster"][0]], signal.SIGKILL)
            return task.deferLater(reactor, 0.002, lambda: None)  # a slow receiver

        def started(info, index):
            out["starts"] += 1
            out["index"] = index

        reader = StorgClient(args["cluster"], reactor=reactor, timeout=30, tls=from_environment())
        try:  # a new client starts at the first address: the node that will die
            await reader.get_stream("/stream/big", write, offset=1000, on_start=started)
            out["served_by"] = sorted(reader._connections)  # the dead node's connection was dropped
        finally:
            reader.close()
        out["same"] = b"".join(got) == data[1000:]
        out["pieces"] = len(got)
    finally:
        client.close()
    print(json.dumps(out))

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


def test_a_get_stream_resumes_on_another_node_when_its_node_dies(cluster):
    wait_for(cluster.leader, 60, "a leader", 0.2)
    leader = cluster.leader()
    victim = next(nid for nid in cluster.nodes if nid != leader)
    order = [cluster.nodes[victim].client_address] + [n.client_address for nid, n in cluster.nodes.items()
                                                      if nid != victim]
    pids = {n.client_address: n.proc.pid for n in cluster.nodes.values()}
    size = 320 * 64 * 1024 + 5  # 20 MiB: more than the sockets' buffers hold
    out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT], env=cluster.env, capture_output=True,
                         timeout=120, input=json.dumps({"cluster": order, "pids": pids, "size": size}).encode())
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    result = json.loads(out.stdout)
    assert result == {"starts": 1, "index": result["index"], "put_sha": True, "etag": True, "same": True,
                      "pieces": result["pieces"], "served_by": result["served_by"]}
    assert result["served_by"] and order[0] not in result["served_by"]  # finished on another node
    assert not cluster.nodes[victim].alive()
    cluster.start(victim)
    wait_for(cluster.everyone_follows, 60, "the killed node back", 0.2)


def test_a_put_has_the_md5_as_its_etag_and_paths_go_to_4096_bytes(cluster):
    data = os.urandom(200_000)
    assert ctl(cluster, "put", "-", "/b/etag", input=data).returncode == 0
    info = json.loads(ctl(cluster, "--json", "stat", "/b/etag").stdout)
    assert info["etag"] == hashlib.md5(data).hexdigest()
    assert b"etag:      " + hashlib.md5(data).hexdigest().encode() in ctl(cluster, "stat", "/b/etag").stdout
    longest = "/b/" + "k" * 4094
    out = ctl(cluster, "put", "-", longest, input=b"long")
    assert out.returncode == 0, out.stderr
    assert ctl(cluster, "get", longest, "-").stdout == b"long"
    over = ctl(cluster, "put", "-", longest + "k", input=b"too long")
    assert over.returncode == 2 and b"4097 bytes" in over.stderr
