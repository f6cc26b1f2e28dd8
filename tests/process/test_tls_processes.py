"""Mutual TLS on a real cluster: strangers refused at every listener, roles enforced by storgctl.

Issue 15.  Three ``twistd storg`` nodes with the certificates ``storgctl
certs init`` makes (ProcCluster's default).  Each stranger of
:func:`storg.testing.tls_material.strangers` knocks on the client port and
on the peer port of n1, three times: it is refused every time, n1 logs it
once, and the cluster keeps serving.  A node's own certificate used to
claim another node's id on the peer port is refused too.  Then storgctl
with each role: ``readonly`` cannot put, ``readwrite`` cannot change
membership or send what only nodes send, ``admin`` can.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from storg.config import cluster_id, load_config
from storg.server.peer import PROTOCOL_VERSION
from storg.testing.devcluster import BIN, ProcCluster, wait_for
from storg.testing.tls_material import attempt, strangers
from storg.wire import ErrorCode, ErrorReply, Hello, HelloRefused, ProbeRead

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""

KNOCKS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcCluster.create(tmp_path_factory.mktemp("tls"), size=3)
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        yield c
    finally:
        c.close()


def run(cluster: ProcCluster, env: dict, *args: str, data: bytes | None = None,
        timeout: float = 10) -> subprocess.CompletedProcess:
    """The real storgctl in a process of its own, with ``env``'s TLS variables (a role's certificate)."""
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    return subprocess.run([str(BIN / "storgctl"), "--cluster", addresses, "--timeout", str(timeout), *args],
                          env=env, capture_output=True, timeout=60, input=data)


def test_strangers_are_refused_at_both_listeners_and_logged_once(cluster, tmp_path):
    n1 = cluster.nodes["n1"]
    before = cluster.log_text("n1")
    cid = cluster_id(load_config(str(n1.config_path)))
    for name, triple in strangers(cluster.certs, tmp_path).items():
        for _ in range(KNOCKS):
            outcome, detail = attempt(n1.host, n1.client_port, triple, ProbeRead(1))
            if name == "a node that is not a member":
                assert outcome == "answered" and isinstance(detail, ErrorReply), detail
                assert detail.code == ErrorCode.PERMISSION_DENIED and "not a member" in detail.message
            else:
                assert outcome == "refused", (name, detail)
            outcome, detail = attempt(n1.host, n1.peer_port, triple, Hello(PROTOCOL_VERSION, cid, "n9", "i"))
            if name == "a node that is not a member":
                assert outcome == "answered" and isinstance(detail, HelloRefused), detail
                assert "not a member" in detail.reason or "n9" in detail.reason, detail.reason
            else:
                assert outcome == "refused", (name, detail)
    log = cluster.log_text("n1")[len(before):]
    client_port = re.findall(r"\[storg.client_port#warn\] (refused a TLS connection|permission denied)[^\n]*", log)
    peer_port = re.findall(r"\[storg.peer#warn\] (?:refused a TLS connection|refused n9)[^\n]*", log)
    # Each of the four strangers: one line per listener, however often it knocked.
    assert len(client_port) == 4, "\n".join(re.findall(r"\[storg.client_port#warn\][^\n]*", log))
    assert len(peer_port) == 4, "\n".join(re.findall(r"\[storg.peer#warn\][^\n]*", log))
    # The cluster kept serving, and n1 still hears its peers.
    assert cluster.storgctl("put", "-", "/after-strangers", input=b"still here").returncode == 0
    assert cluster.storgctl("get", "/after-strangers", "-", nodes=["n1"]).stdout == b"still here"
    assert wait_for(cluster.everyone_follows, 30, "every node following one leader")


def test_a_node_certificate_cannot_claim_another_node(cluster):
    n1 = cluster.nodes["n1"]
    cid = cluster_id(load_config(str(n1.config_path)))
    leader = cluster.leader()
    n2_cert = (str(cluster.certs / "ca.pem"), str(cluster.certs / "n2.pem"), str(cluster.certs / "n2-key.pem"))
    outcome, detail = attempt(n1.host, n1.peer_port, n2_cert, Hello(PROTOCOL_VERSION, cid, "n3", "forged"))
    assert outcome == "answered" and isinstance(detail, HelloRefused), detail
    assert "the certificate names node n2, the Hello claims n3" in detail.reason
    assert "certificate names node n2, the Hello claims n3" in cluster.log_text("n1")
    # The real n3 kept its link: nothing changed hands.
    assert cluster.leader() == leader
    assert cluster.storgctl("put", "-", "/after-impostor", input=b"x").returncode == 0


def test_roles_through_storgctl(cluster):
    reader = cluster.add_client("reader", "readonly")
    writer = cluster.add_client("writer", "readwrite")
    out = cluster.storgctl("put", "-", "/by-admin", input=b"admin")
    assert out.returncode == 0, out.stderr
    out = run(cluster, reader, "get", "/by-admin", "-")
    assert out.returncode == 0 and out.stdout == b"admin", out.stderr
    out = run(cluster, reader, "put", "-", "/by-reader", data=b"no")
    assert out.returncode == 1 and out.stderr.startswith(b"storgctl: permission denied"), out.stderr
    out = run(cluster, reader, "rm", "/by-admin")
    assert out.returncode == 1 and b"permission denied" in out.stderr, out.stderr
    out = run(cluster, writer, "put", "-", "/by-writer", data=b"yes")
    assert out.returncode == 0, out.stderr
    for args in (("member", "remove", "n3"), ("leader", "transfer"), ("scrub", "--start"),
                 ("member", "add", "n9", "--peer", "127.0.0.1:1", "--client", "127.0.0.1:2")):
        out = run(cluster, writer, *args)
        assert out.returncode == 1 and b"permission denied" in out.stderr, (args, out.stderr)
    members = cluster.storgctl("--json", "member", "list")
    assert members.returncode == 0 and b'"n9"' not in members.stdout and b'"n3"' in members.stdout
    # No TLS options against a TLS cluster: unavailable, with a hint.
    plain = {k: v for k, v in cluster.env.items() if not k.startswith("STORG_")}
    out = run(cluster, plain, "status", timeout=2)
    assert out.returncode == 3 and b"--ca, --cert and --key" in out.stderr, out.stderr
    # The CA but no certificate: every node refuses us in the handshake, said at once (exit 2).
    anonymous = dict(plain, STORG_CA=cluster.env["STORG_CA"])
    started = time.monotonic()
    out = run(cluster, anonymous, "status")
    assert out.returncode == 2 and b"every node refused TLS" in out.stderr, out.stderr
    assert b"certificate required" in out.stderr, out.stderr
    assert time.monotonic() - started < 8, "a refused certificate was retried until the timeout"


def test_the_fast_commands_as_fresh_storgctl_processes(cluster, tmp_path):
    """The installed ``storgctl`` entry point, a fresh process per command (no fork server), over
    mutual TLS: the blocking driver's put, get, ls, stat, rm and status against real nodes."""
    env = cluster.env
    data = os.urandom(300_000)  # more than one frame, less than a chunk
    (tmp_path / "in").write_bytes(data)
    out = run(cluster, env, "--json", "put", str(tmp_path / "in"), "/fresh/f")
    assert out.returncode == 0, out.stderr
    put = json.loads(out.stdout)
    out = run(cluster, env, "get", "/fresh/f", str(tmp_path / "out"))
    assert out.returncode == 0 and (tmp_path / "out").read_bytes() == data, out.stderr
    out = run(cluster, env, "get", "--stale", "/fresh/f")
    assert out.returncode == 0 and out.stdout == data, out.stderr
    out = run(cluster, env, "--json", "ls", "/fresh")
    assert [f["path"] for f in json.loads(out.stdout)] == ["/fresh/f"], out.stderr
    out = run(cluster, env, "--json", "stat", "/fresh/f")
    assert json.loads(out.stdout)["sha256"] == put["sha256"] == hashlib.sha256(data).hexdigest()
    out = run(cluster, env, "--json", "status")
    rows = json.loads(out.stdout)
    assert sorted(r["id"] for r in rows) == ["n1", "n2", "n3"] and "unreachable" not in {r["role"] for r in rows}
    assert run(cluster, env, "rm", "/fresh/f").returncode == 0
    out = run(cluster, env, "stat", "/fresh/f")
    assert out.returncode == 1 and out.stderr == b"storgctl: /fresh/f: not found\n"


NOT_ON_THE_FAST_PATH = ("twisted", "cryptography", "OpenSSL", "yaml", "storg.raft", "storg.wire.raft",
                        "storg.wire.chunks", "json", "_strptime", "encodings.idna", "dataclasses")
"""What put, get and status of a small file must not import (each costs a storgctl milliseconds):
the Twisted stack, the consensus core's types and the node-only frames, dataclasses (with inspect:
storg.wire.record says why), json without --json, the date parsing that ssl.cert_time_to_seconds
pulls in, and the idna codec for an ASCII address."""


@pytest.mark.parametrize("command", [["put", "{local}", "/lean/f"], ["get", "/lean/f"], ["status"]])
def test_the_fast_commands_import_only_what_they_use(cluster, tmp_path, command):
    """The real entry point over mutual TLS, under ``python -X importtime`` (which lists every
    import on stderr): a module of NOT_ON_THE_FAST_PATH, or a package below one, fails it."""
    local = tmp_path / "one-kib"
    local.write_bytes(os.urandom(1024))
    if command[0] == "get":
        assert run(cluster, cluster.env, "put", str(local), "/lean/f").returncode == 0
    addresses = ",".join(n.client_address for n in cluster.nodes.values())
    argv = [a.format(local=local) for a in command]
    out = subprocess.run([str(BIN / "python"), "-X", "importtime", str(BIN / "storgctl"), "--cluster", addresses,
                          *argv], env=cluster.env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.decode().splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert "storg.client.blocking" in imported and "ssl" in imported  # the listing is what ran
    assert [line for line in lines if not line.startswith("import time:")] == []
    unwanted = sorted(m for m in imported if any(m == p or m.startswith(p + ".") for p in NOT_ON_THE_FAST_PATH))
    assert unwanted == []
