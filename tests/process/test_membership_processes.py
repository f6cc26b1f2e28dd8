"""Membership and leadership end to end: real nodes, real storgctl, a writer that must never fail."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import signal
import subprocess
import threading

import pytest

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

CHUNK = 64 * 1024


@pytest.fixture
def cluster(tmp_path, request):
    raft = getattr(request, "param", None)
    c = ProcCluster.create(tmp_path, size=3, files={"chunk_size": CHUNK}, raft=raft)
    try:
        c.start_all()
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()


def ctl(cluster, *args, nodes=None, check=True, timeout=120):
    out = cluster.storgctl("--timeout", "30", *args, nodes=nodes, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"storgctl {' '.join(args)} exited {out.returncode}: {out.stderr.decode()}")
    return out


def members(cluster, nodes=None) -> dict[str, str]:
    rows = json.loads(ctl(cluster, "--json", "member", "list", nodes=nodes).stdout)
    return {r["id"]: r["role"] for r in rows}


def content(i: int) -> bytes:
    return f"file {i}\n".encode() * (50 + i % 7)


class Writer(threading.Thread):
    """``storgctl put`` in a loop, one process per put, until stopped; records every outcome."""

    def __init__(self, cluster: ProcCluster, nodes: list[str], prefix: str = "/w") -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.nodes = list(nodes)
        self.prefix = prefix
        self.results: list[tuple[str, int, bytes]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            path = f"{self.prefix}/{i}"
            out = self.cluster.storgctl("--timeout", "30", "put", "-", path, nodes=self.nodes,
                                        input=content(i), timeout=120)
            self.results.append((path, out.returncode, out.stderr))
            i += 1

    def wait_for_puts(self, count: int, timeout: float = 60) -> None:
        target = len(self.results) + count
        wait_for(lambda: len(self.results) >= target, timeout, f"{count} more puts")

    def finish(self) -> list[str]:
        self._halt.set()
        self.join(timeout=150)
        failed = [(p, code, err.decode()) for p, code, err in self.results if code != 0 or err]
        assert not failed, f"puts failed: {failed[:5]}"
        assert self.results, "the writer wrote nothing"
        return [p for p, _, _ in self.results]


def all_nodes(cluster: ProcCluster) -> list[str]:
    return list(cluster.nodes)


READ_ALL = """
import hashlib, io, json, sys
from twisted.internet import defer, task
from storg.client.api import StorgClient
from storg.net.credentials import from_environment

async def main(reactor, addresses, paths):
    client = StorgClient(addresses.split(","), reactor=reactor, timeout=30, tls=from_environment())
    digests = {}
    for path in paths:
        sink = io.BytesIO()
        await client.get(path, sink)
        digests[path] = hashlib.sha256(sink.getvalue()).hexdigest()
    client.close()
    print(json.dumps(digests))

task.react(lambda r: defer.Deferred.fromCoroutine(main(r, sys.argv[1], json.load(sys.stdin))))
"""


def check_readable(cluster: ProcCluster, paths: list[str], nodes: list[str]) -> None:
    """Every path reads back its content (one client process for all: storgctl per file is slow)."""
    addresses = ",".join(cluster.nodes[n].client_address for n in nodes)
    out = subprocess.run([str(BIN / "python"), "-c", READ_ALL, addresses],
                         input=json.dumps(paths).encode(), env=cluster.env, capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    digests = json.loads(out.stdout)
    for path in paths:
        i = int(path.rsplit("/", 1)[1])
        assert digests[path] == hashlib.sha256(content(i)).hexdigest(), path


def applied(cluster: ProcCluster, nid: str) -> int:
    return cluster.status(nodes=[nid])[0]["applied_index"] if cluster.nodes[nid].alive() else -1


def leader_commit(cluster: ProcCluster) -> int:
    """The commit index of the leader that every live node agrees on.

    Every live node, the one just restarted included: it may win the next
    election itself (a rolling restart that stops the leader makes one), and
    a leader looked for only among the others would then never be found.
    """
    leader = wait_for(cluster.leader, 30, "a leader")
    return {r["id"]: r for r in cluster.status(nodes=[leader])}[leader]["commit_index"]


def add_member(cluster: ProcCluster, nid: str, via: list[str]) -> subprocess.CompletedProcess:
    node = cluster.nodes[nid]
    return ctl(cluster, "member", "add", nid, "--peer", node.peer_address,
               "--client", node.client_address, nodes=via)


def test_add_two_nodes_and_remove_two_while_a_writer_runs(cluster):
    founders = ["n1", "n2", "n3"]
    for nid in ("n4", "n5"):
        cluster.add_node(nid)
    writer = Writer(cluster, all_nodes(cluster))
    writer.start()
    try:
        writer.wait_for_puts(3)
        for nid in ("n4", "n5"):
            cluster.start(nid)
            add_member(cluster, nid, founders)
            assert members(cluster, founders)[nid] == "voter"
            writer.wait_for_puts(2)
        assert sorted(members(cluster)) == ["n1", "n2", "n3", "n4", "n5"]
        leader = wait_for(cluster.leader, 30, "a leader of five")
        # Remove the leader itself (it hands over first) and one of the newcomers.
        for nid in (leader, "n4"):
            out = ctl(cluster, "member", "remove", nid)
            assert out.stdout.decode().strip() == f"{nid} removed"
            wait_for(lambda nid=nid: not cluster.nodes[nid].alive(), 30, f"{nid} to stop")
            assert cluster.nodes[nid].proc.returncode == 0
            assert re.search(r"removed from the cluster by \S+ .*; stopping", cluster.log_text(nid))
            writer.wait_for_puts(2)
    finally:
        paths = writer.finish()
    live = [n for n in cluster.nodes if cluster.nodes[n].alive()]
    assert len(live) == 3 and sorted(members(cluster, live)) == sorted(live)
    check_readable(cluster, paths, live)


def test_rolling_restart_while_a_writer_runs(cluster):
    writer = Writer(cluster, all_nodes(cluster))
    writer.start()
    try:
        writer.wait_for_puts(2)
        for nid in list(cluster.nodes):
            assert cluster.kill(nid, signal.SIGTERM) == 0
            cluster.start(nid)
            target = leader_commit(cluster)
            wait_for(lambda nid=nid, target=target: applied(cluster, nid) >= target, 30,
                     f"{nid} to catch up")
            writer.wait_for_puts(1)
    finally:
        paths = writer.finish()
    check_readable(cluster, paths, list(cluster.nodes))


def test_leader_transfer_to_a_chosen_node_and_to_any(cluster):
    leader = cluster.leader()
    chosen = next(n for n in cluster.nodes if n != leader)
    out = ctl(cluster, "--json", "leader", "transfer", chosen)
    assert json.loads(out.stdout)["leader"] == chosen
    assert wait_for(cluster.leader, 30, "the chosen leader") == chosen
    out = ctl(cluster, "leader", "transfer")
    new = out.stdout.decode().split()[0]
    assert new != chosen and wait_for(cluster.leader, 30, "a leader") == new
    out = ctl(cluster, "leader", "transfer", "n9", check=False)
    assert out.returncode == 1 and b"n9 is not a voter" in out.stderr
    out = ctl(cluster, "member", "remove", "n9", check=False)
    assert out.returncode == 1 and out.stderr.startswith(b"storgctl: ")
    out = ctl(cluster, "member", "add", "n9", "--peer", "nohost", "--client", "127.0.0.1:1",
              check=False)
    assert out.returncode == 2


# Snapshots every 5 entries: the leader has compacted its log long before the
# replacement starts, so it catches up by snapshot, then by the log's tail.
@pytest.mark.parametrize("cluster", [{"snapshot_every": 5}], indirect=True)
def test_a_wiped_node_is_replaced_as_the_refusal_says(cluster):
    paths = []
    for i in range(5):
        out = cluster.storgctl("put", "-", f"/before/{i}", input=content(i))
        assert out.returncode == 0, out.stderr
        paths.append(f"/before/{i}")
    others = ["n1", "n2"]
    assert cluster.kill("n3", signal.SIGTERM) == 0
    cluster.wipe("n3")
    cluster.start("n3")

    def refusal():
        for nid in others:
            m = re.search(r"refusing peer: n3 came back with an empty data_dir.*", cluster.log_text(nid))
            if m:
                return m.group(0)
        return None

    line = wait_for(refusal, 30, "the refusal of the wiped n3")
    commands = re.findall(r"`(storgctl [^`]*)`", line)
    assert [c.split()[1:3] for c in commands] == [["member", "remove"], ["member", "add"]]
    assert "start n3 with `join: true`" in line

    # 1. storgctl member remove n3
    out = ctl(cluster, *shlex.split(commands[0])[1:], nodes=others)
    assert out.stdout.decode().strip() == "n3 removed"
    # The wiped n3 hears of its removal and stops by itself.
    wait_for(lambda: not cluster.nodes["n3"].alive(), 30, "the wiped n3 to stop")
    # 2. storgctl member add n3 ... (it waits for n3 to catch up: run it beside step 3)
    add = subprocess.Popen(
        [str(BIN / "storgctl"), "--cluster", ",".join(cluster.nodes[n].client_address for n in others),
         "--timeout", "30", *shlex.split(commands[1])[1:]],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: members(cluster, others).get("n3") == "learner", 30, "n3 as a learner")
        # 3. start n3 with join: true
        cluster.set_join("n3", True)
        cluster.start("n3")
        stdout, stderr = add.communicate(timeout=60)
    finally:
        if add.poll() is None:
            add.kill()
    assert add.returncode == 0, stderr
    assert stdout.decode().strip() == "n3 is a voter"
    target = leader_commit(cluster)
    wait_for(lambda: applied(cluster, "n3") >= target, 30, "n3 to catch up")
    joined = cluster.log_text("n3").split("waiting to join", 1)[1]
    assert re.search(r"install\w* .*snapshot", joined), "n3 did not catch up by snapshot"
    n3 = cluster.nodes["n3"].client_address
    for i, path in enumerate(paths):
        out = subprocess.run([str(BIN / "storgctl"), "--cluster", n3, "get", path, "-"],
                             env=cluster.env, capture_output=True, timeout=60)
        assert out.returncode == 0 and out.stdout == content(i), out.stderr
