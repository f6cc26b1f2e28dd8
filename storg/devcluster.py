"""A local cluster of real ``twistd storg`` processes, for tests and benchmarks.

Each node gets a generated config with ports picked by the OS on 127.0.0.1,
a data_dir under the given folder, and its own log file.  Every process
started is killed when the cluster is closed, whatever the caller did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail while things settle
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class ProcNode:
    node_id: str
    config_path: Path
    log_path: Path
    peer_port: int
    client_port: int
    proc: subprocess.Popen | None = None

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ProcCluster:
    root: Path
    nodes: dict[str, ProcNode] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, size: int = 3, raft: dict | None = None,
               files: dict | None = None) -> "ProcCluster":
        """Write configs for ``size`` nodes n1..nN under ``root``; start none yet."""
        root = Path(root).resolve()
        cluster = cls(root)
        ports = {f"n{i}": (free_port(), free_port()) for i in range(1, size + 1)}
        members = {nid: {"peer": f"127.0.0.1:{p}", "client": f"127.0.0.1:{c}"}
                   for nid, (p, c) in ports.items()}
        for nid, (peer, client) in ports.items():
            cfg = {
                "node_id": nid,
                "data_dir": f"data/{nid}",
                "peer_listen": f"127.0.0.1:{peer}",
                "client_listen": f"127.0.0.1:{client}",
                "cluster": members,
            }
            if raft:
                cfg["raft"] = raft
            if files:
                cfg["files"] = files
            path = root / f"{nid}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            cluster.nodes[nid] = ProcNode(nid, path, root / f"{nid}.log", peer, client)
        env = dict(os.environ)
        # twistd finds twisted/plugins/ by scanning sys.path: make this checkout win.
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        cluster.env = env
        return cluster

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        assert not node.alive(), f"{nid} is already running"
        log = open(node.log_path, "ab")
        node.proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile", "", "storg", "--config", str(node.config_path)],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start_all(self) -> None:
        for nid in self.nodes:
            self.start(nid)

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> int:
        node = self.nodes[nid]
        if node.proc is None:
            return 0
        if node.proc.poll() is None:
            node.proc.send_signal(sig)
        code = node.proc.wait(timeout=30)
        node.proc = None
        return code

    def close(self) -> None:
        for nid, node in self.nodes.items():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=30)
            node.proc = None

    def storgctl(self, *args: str, nodes: list[str] | None = None, timeout: float = 60,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        addresses = ",".join(self.nodes[n].client_address for n in (nodes or list(self.nodes)))
        return subprocess.run(
            [str(BIN / "storgctl"), "--cluster", addresses, *args],
            env=self.env, capture_output=True, timeout=timeout, input=input,
        )

    def status(self, nodes: list[str] | None = None) -> list[dict]:
        out = self.storgctl("--timeout", "3", "--json", "status", nodes=nodes)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode())
        return json.loads(out.stdout)

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader every live member agrees on, or None."""
        live = among or [n for n, node in self.nodes.items() if node.alive()]
        rows = [r for r in self.status(nodes=live) if r["id"] in live]
        leaders = {r["id"] for r in rows if r["role"] == "leader"}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if all(r["leader"] == leader for r in rows if r["role"] != "unreachable"):
            return leader
        return None

    def data_dir(self, nid: str) -> Path:
        return self.root / "data" / nid

    def log_text(self, nid: str) -> str:
        try:
            return self.nodes[nid].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
