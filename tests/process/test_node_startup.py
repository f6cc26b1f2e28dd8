"""Starting a node: refusals are one clear line and a non-zero exit; a cluster of one serves at once."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from storg.testing.devcluster import BIN, ProcCluster, wait_for

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""


def run_twistd(cluster: ProcCluster, config) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile", "", "storg", "--config", str(config)],
        cwd=cluster.root, env=cluster.env, capture_output=True, timeout=60,
    )


def test_a_broken_config_is_refused_with_one_line_naming_file_and_key(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=1)
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((tmp_path / "n1.yaml").read_text())
    cfg["raft"] = {"heartbeat_ms": -5}
    bad.write_text(yaml.safe_dump(cfg))
    out = run_twistd(cluster, bad)
    assert out.returncode != 0
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "bad.yaml" in lines[0] and "raft.heartbeat_ms" in lines[0]

    out = run_twistd(cluster, tmp_path / "missing.yaml")
    assert out.returncode != 0
    assert "missing.yaml" in out.stderr.decode()


def test_a_data_dir_of_another_node_is_refused(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=2)
    try:
        cluster.start("n1")
        wait_for(lambda: (tmp_path / "data" / "n1").exists() and "started in" in cluster.log_text("n1"),
                 30, "n1 to create its data_dir")
    finally:
        cluster.close()  # kills n1 whatever happened
    cfg = yaml.safe_load((tmp_path / "n2.yaml").read_text())
    cfg["data_dir"] = "data/n1"
    other = tmp_path / "n2-on-n1.yaml"
    other.write_text(yaml.safe_dump(cfg))
    out = run_twistd(cluster, other)
    assert out.returncode != 0
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "data_dir" in lines[0] and "n1" in lines[0]


def test_a_cluster_of_one_elects_itself_and_serves(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=1)
    try:
        cluster.start("n1")
        assert wait_for(cluster.leader, 30, "n1 to lead itself") == "n1"
    finally:
        cluster.close()


def test_a_wiped_member_is_refused_as_a_voter_with_instructions(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=3)
    try:
        cluster.start_all()
        leader = wait_for(cluster.leader, 30, "a leader")
        victim = next(n for n in cluster.nodes if n != leader)
        cluster.kill(victim)
        shutil.rmtree(tmp_path / "data" / victim)
        cluster.start(victim)
        text = wait_for(lambda: "came back with an empty data_dir" in cluster.log_text(leader)
                        and cluster.log_text(leader), 30, "the leader to refuse the wiped node")
        line = next(ln for ln in text.splitlines() if "came back with an empty data_dir" in ln)
        assert re.search(rf"storgctl member remove {victim}", line)
        assert f"storgctl member add {victim} --peer" in line and "join: true" in line
        others = [n for n in cluster.nodes if n != victim]
        assert cluster.leader(others) == leader
        rows = {r["id"]: r for r in cluster.status(nodes=[victim])}
        assert rows[victim]["term"] == 0 and rows[victim]["role"] != "leader"
    finally:
        cluster.close()


def one_line_refusal(cluster: ProcCluster, cfg: dict, name: str) -> str:
    path = cluster.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_twistd(cluster, path)
    assert out.returncode != 0
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{name}.yaml" in lines[0]
    return lines[0]


def test_tls_material_that_cannot_work_is_refused_at_start(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=2)
    cfg = yaml.safe_load((tmp_path / "n1.yaml").read_text())
    # Another node's certificate: the node would claim to be n2.
    line = one_line_refusal(cluster, dict(cfg, tls=dict(cfg["tls"], cert="certs/n2.pem", key="certs/n2-key.pem")),
                            "wrong-cert")
    assert "names node n2, not node n1" in line
    line = one_line_refusal(cluster, dict(cfg, tls=dict(cfg["tls"], key="certs/missing-key.pem")), "no-key")
    assert "missing-key.pem" in line and "tls" in line
    # A non-loopback address without TLS, and no `tls: off`.
    plain = {k: v for k, v in cfg.items() if k != "tls"}
    line = one_line_refusal(cluster, dict(plain, client_listen="192.0.2.1:8001"), "exposed")
    assert "client_listen" in line and "not a loopback address" in line and "tls: off" in line


def test_plain_tcp_is_served_on_loopback_with_a_warning(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=1, tls=False)
    try:
        cluster.start("n1")
        assert wait_for(cluster.leader, 30, "n1 to lead itself") == "n1"
        assert "WARNING: no tls section: serving plain TCP on loopback only" in cluster.log_text("n1")
    finally:
        cluster.close()
