"""A local cluster of real ``twistd storg`` processes, for tests and benchmarks.

Each node gets a generated config with free ports on 127.0.0.1 (see
:func:`free_port`), a data_dir under the given folder, and its own log
file.  Every process started is killed when the cluster is closed,
whatever the caller did.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storg.testing.storgctl_server import StorgctlRunner

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[tuple[str, int]] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = map(int, _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _port_pool() -> range:
    """Ports to pick listeners from: the widest stretch of 10000-65535 outside the ephemeral range."""
    low, high = ephemeral_range()
    below, above = range(10000, max(10000, low)), range(max(10000, high + 1), 65536)
    return max(below, above, key=len)


def free_port(host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A port on ``host`` that nothing is bound to, outside the kernel's ephemeral range.

    A node starts listening a moment after its port is picked, and its
    peers may already be connecting to it.  A port from the ephemeral range
    (what binding port 0 gives) can meanwhile be handed to one of their
    outgoing connections as its source port; on loopback, a connection to
    a port nobody listens on can even connect to itself (TCP simultaneous
    open).  Either way the node then fails to bind: a test cluster that
    lost a node at random.  Ports from outside that range are never given
    out as source ports.  A port is never handed out twice by this process.
    """
    rng = rng or random.SystemRandom()
    pool = _port_pool()
    if len(pool) < 1000:  # no room outside the ephemeral range: let the OS pick
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = rng.choice(pool)
        if (host, port) in _handed_out:
            continue
        try:
            with socket.socket() as s:
                s.bind((host, port))
        except OSError:
            continue
        _handed_out.add((host, port))
        return port
    raise RuntimeError(f"no free port found on {host} in {pool.start}-{pool.stop - 1}")


def loopback_hosts(size: int, rng: random.Random | None = None) -> list[str]:
    """``size`` loopback addresses of one random 127.X.Y.0/24 (never 127.0.0.x).

    Each node of a fault-test cluster gets its own address, so a firewall
    rule can name a node; a random /24 keeps clusters of tests running at
    the same time (and their rules) apart.
    """
    rng = rng or random.SystemRandom()
    while True:
        x, y = rng.randrange(1, 255), rng.randrange(0, 256)
        if (x, y) != (0, 0):
            return [f"127.{x}.{y}.{10 + i}" for i in range(1, size + 1)]


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


STORGCTL_SERVER = False
"""Default of :attr:`ProcCluster.storgctl_server` for clusters created from now on.

The test suite turns it on (tests/conftest.py); benchmarks and scripts keep
one plain ``storgctl`` process per command."""

_servers: dict[tuple, StorgctlRunner] = {}
_servers_lock = threading.Lock()


def shared_storgctl_runner(env: dict[str, str]) -> StorgctlRunner:
    """The shared fork server for storgctl commands run with ``env`` (started on first use)."""
    key = tuple(sorted(env.items()))
    with _servers_lock:
        runner = _servers.get(key)
        if runner is None or not runner.alive():
            runner = _servers[key] = StorgctlRunner(env)
        return runner


def close_storgctl_servers() -> None:
    """Stop every shared storgctl fork server (the test session's end)."""
    with _servers_lock:
        runners = list(_servers.values())
        _servers.clear()
    for runner in runners:
        runner.close()


@dataclass
class ProcNode:
    node_id: str
    config_path: Path
    log_path: Path
    peer_port: int
    client_port: int
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    cgroup: Path | None = None
    """A cgroup v2 folder the node is started in (set by :class:`LinkFirewall`)."""
    http_port: int | None = None
    """The node's ``http_listen`` port, when the cluster was created with ``http=True``."""

    s3_port: int | None = None
    """The node's ``s3_listen`` port, when the cluster was created with ``s3=True``."""

    @property
    def http_address(self) -> str:
        assert self.http_port is not None, "the cluster was created without http=True"
        return f"{self.host}:{self.http_port}"

    @property
    def s3_address(self) -> str:
        assert self.s3_port is not None, "the cluster was created without s3=True"
        return f"{self.host}:{self.s3_port}"

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.host}:{self.peer_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ProcCluster:
    root: Path
    nodes: dict[str, ProcNode] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    storgctl_server: bool = False
    """Run :meth:`storgctl` commands from a fork server (see :mod:`storg.testing.storgctl_server`):
    the same ``storg.cli.main.main(argv)`` in a process of its own, without
    paying ~0.4 s of interpreter start-up per command."""
    tls: bool = False
    """Mutual TLS on every port: ``certs/`` under root holds the CA, a pair per node and the
    admin's (``storgctl certs init``); :attr:`env` points storgctl at the admin's."""

    encryption: bool = False
    """Encryption at rest: ``keys/cluster.key`` under root (``storgctl keys init``), in every config."""

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def key_file(self) -> Path:
        return self.root / "keys" / "cluster.key"

    @classmethod
    def create(cls, root: Path, size: int = 3, raft: dict | None = None,
               files: dict | None = None, hosts: list[str] | None = None, tls: bool = True,
               extra: dict | None = None, limits: dict | None = None, http: bool = False,
               encryption: bool = True, s3: bool = False) -> ProcCluster:
        """Write configs for ``size`` nodes n1..nN under ``root``; start none yet.

        ``hosts``: one loopback address per node (see :func:`loopback_hosts`),
        so that firewall rules can tell the nodes apart; default 127.0.0.1 for all.
        ``tls``: on by default, as in ``scripts/cluster.sh``: the tests run what
        users run.  ``extra``: more top-level config keys for every node.
        ``http``: give every node an ``http_listen`` port too (status page, /metrics).
        ``encryption``: encryption at rest, on by default for the same reason.
        ``s3``: give every node an ``s3_listen`` port too (the S3 gateway).
        """
        root = Path(root).resolve()
        cluster = cls(root, storgctl_server=STORGCTL_SERVER, tls=tls, encryption=encryption)
        if encryption:
            from storg.storage.keys import init_key_file
            cluster.key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            init_key_file(cluster.key_file)
        hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * size
        if len(hosts) != size:
            raise ValueError(f"{len(hosts)} hosts given for {size} nodes")
        host_of = {f"n{i}": hosts[i - 1] for i in range(1, size + 1)}
        ports = {nid: (free_port(h), free_port(h)) for nid, h in host_of.items()}
        if tls:
            from storg.net.certs import init_dir
            init_dir(str(cluster.certs), list(host_of), sorted(set(hosts)))
        members = {nid: {"peer": f"{host_of[nid]}:{p}", "client": f"{host_of[nid]}:{c}"}
                   for nid, (p, c) in ports.items()}
        for nid, (peer, client) in ports.items():
            cfg = {
                "node_id": nid,
                "data_dir": f"data/{nid}",
                "peer_listen": f"{host_of[nid]}:{peer}",
                "client_listen": f"{host_of[nid]}:{client}",
                "cluster": members,
            }
            http_port = free_port(host_of[nid]) if http else None
            if http_port is not None:
                cfg["http_listen"] = f"{host_of[nid]}:{http_port}"
            s3_port = free_port(host_of[nid]) if s3 else None
            if s3_port is not None:
                cfg["s3_listen"] = f"{host_of[nid]}:{s3_port}"
            if raft:
                cfg["raft"] = raft
            if files:
                cfg["files"] = files
            if tls:
                cfg["tls"] = cluster._tls_section(nid)
            if encryption:
                cfg["encryption"] = {"key_file": "keys/cluster.key"}
            if extra:
                cfg.update(extra)
            if limits:
                cfg["limits"] = limits
            path = root / f"{nid}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            cluster.nodes[nid] = ProcNode(nid, path, root / f"{nid}.log", peer, client,
                                          host=host_of[nid], http_port=http_port, s3_port=s3_port)
        env = dict(os.environ)
        # twistd finds twisted/plugins/ by scanning sys.path: make this checkout win.
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        for name in ("STORG_CA", "STORG_CERT", "STORG_KEY"):
            env.pop(name, None)
        if tls:
            env.update(cluster.client_env("admin"))
        cluster.env = env
        return cluster

    def _tls_section(self, nid: str) -> dict[str, str]:
        return {"ca": "certs/ca.pem", "cert": f"certs/{nid}.pem", "key": f"certs/{nid}-key.pem"}

    def client_env(self, name: str) -> dict[str, str]:
        """storgctl's TLS variables for the client certificate ``certs/NAME.pem``."""
        return {"STORG_CA": str(self.certs / "ca.pem"), "STORG_CERT": str(self.certs / f"{name}.pem"),
                "STORG_KEY": str(self.certs / f"{name}-key.pem")}

    def add_client(self, name: str, role: str) -> dict[str, str]:
        """A client certificate of ``role`` (``storgctl certs client``); its storgctl env."""
        from storg.net.certs import add_client
        add_client(str(self.certs), name, role)
        return dict(self.env, **self.client_env(name))

    def add_node(self, nid: str, host: str = "127.0.0.1") -> ProcNode:
        """Write the config of a new node that waits to be added (``join: true``); start none.

        Its ``cluster`` section is the founding members', copied from the
        first node's config: the cluster id is derived from it, so a joiner
        with any other section would be refused by every peer.
        """
        assert nid not in self.nodes, f"{nid} already exists"
        template = yaml.safe_load(next(iter(self.nodes.values())).config_path.read_text())
        peer, client = free_port(host), free_port(host)
        cfg = dict(template, node_id=nid, data_dir=f"data/{nid}",
                   peer_listen=f"{host}:{peer}", client_listen=f"{host}:{client}", join=True)
        if self.tls:
            from storg.net.certs import add_node
            add_node(str(self.certs), nid, [host])
            cfg["tls"] = self._tls_section(nid)
        path = self.root / f"{nid}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        node = ProcNode(nid, path, self.root / f"{nid}.log", peer, client, host=host)
        self.nodes[nid] = node
        return node

    def set_join(self, nid: str, join: bool = True) -> None:
        """Rewrite ``nid``'s config with ``join`` (a replaced node restarts with join: true)."""
        path = self.nodes[nid].config_path
        cfg = yaml.safe_load(path.read_text())
        cfg["join"] = join
        path.write_text(yaml.safe_dump(cfg))

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        assert not node.alive(), f"{nid} is already running"
        log = open(node.log_path, "ab")
        command = [str(BIN / "twistd"), "-n", "--pidfile", "", "storg", "--config", str(node.config_path)]
        if node.cgroup is not None:
            # Join the cgroup before exec, so every socket the node opens belongs to it.
            command = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"',
                       str(node.cgroup / "cgroup.procs"), *command]
        node.proc = subprocess.Popen(
            command,
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

    def pause(self, nid: str) -> None:
        """SIGSTOP: the node keeps its sockets open but answers nothing (a GC pause, a stuck VM)."""
        proc = self.nodes[nid].proc
        assert proc is not None, f"node {nid} is not running"
        proc.send_signal(signal.SIGSTOP)

    def resume(self, nid: str) -> None:
        proc = self.nodes[nid].proc
        assert proc is not None, f"node {nid} is not running"
        proc.send_signal(signal.SIGCONT)

    def restart(self, nid: str, sig: int = signal.SIGKILL) -> int:
        """Stop the node with ``sig`` (kill -9 by default) and start it again; its exit code."""
        code = self.kill(nid, sig)
        self.start(nid)
        return code

    def wipe(self, nid: str) -> None:
        """Kill the node and delete its data_dir: a stranger now (docs/architecture.rst, "Membership")."""
        self.kill(nid)
        shutil.rmtree(self.data_dir(nid), ignore_errors=True)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()  # SIGKILL also ends a SIGSTOPped process
                node.proc.wait(timeout=30)
            node.proc = None

    def storgctl(self, *args: str, nodes: list[str] | None = None, timeout: float = 60,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        addresses = ",".join(self.nodes[n].client_address for n in (nodes or list(self.nodes)))
        if self.storgctl_server:
            # TLS as options, not in the server's env: one fork server serves every cluster.
            env = {k: v for k, v in self.env.items() if k not in ("STORG_CA", "STORG_CERT", "STORG_KEY")}
            tls_args: list[str] = []
            if "STORG_CA" in self.env:
                tls_args = ["--ca", self.env["STORG_CA"], "--cert", self.env["STORG_CERT"],
                            "--key", self.env["STORG_KEY"]]
            runner = shared_storgctl_runner(env)
            return runner.completed([*tls_args, "--cluster", addresses, *args], timeout, input=input)
        return subprocess.run(
            [str(BIN / "storgctl"), "--cluster", addresses, *args],
            env=self.env, capture_output=True, timeout=timeout, input=input,
        )

    def status(self, nodes: list[str] | None = None, timeout: float = 3) -> list[dict]:
        """``storgctl --json status``: a member that does not answer in ``timeout`` is ``unreachable``."""
        out = self.storgctl("--timeout", str(timeout), "--json", "status", nodes=nodes)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode())
        return json.loads(out.stdout)

    def leader(self, among: list[str] | None = None, timeout: float = 3) -> str | None:
        """The leader every live member agrees on, or None.

        ``status`` asks every member, ``among`` or not, and waits up to
        ``timeout`` for each: a caller that polls while some member is
        paused may pass a shorter one (it only costs a retry if a slow
        leader's row comes back unreachable).
        """
        live = among or [n for n, node in self.nodes.items() if node.alive()]
        rows = [r for r in self.status(nodes=live, timeout=timeout) if r["id"] in live]
        leaders = {r["id"] for r in rows if r["role"] == "leader"}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if all(r["leader"] == leader for r in rows if r["role"] != "unreachable"):
            return leader
        return None

    def everyone_follows(self) -> str | None:
        """The leader, once every node answers and follows it (:meth:`leader` skips unreachable rows)."""
        rows = self.status()
        leaders = {r["leader"] for r in rows}
        if len(rows) != len(self.nodes) or len(leaders) != 1 or None in leaders:
            return None
        leader = leaders.pop()
        if any(r["role"] == "unreachable" for r in rows):
            return None
        return leader if any(r["id"] == leader and r["role"] == "leader" for r in rows) else None

    def namespace(self, nid: str, timeout: float = 10) -> list[dict]:
        """``ls --stale --json`` of one node: what that node itself has applied."""
        out = self.storgctl("--timeout", str(timeout), "--json", "ls", "--stale", nodes=[nid],
                            timeout=timeout + 30)
        if out.returncode != 0:
            raise RuntimeError(f"ls on {nid}: {out.stderr.decode(errors='replace')}")
        return json.loads(out.stdout)

    def data_dir(self, nid: str) -> Path:
        return self.root / "data" / nid

    def chunk_path(self, nid: str, chunk_hash: str) -> Path:
        """The file of chunk ``chunk_hash`` on ``nid`` (keyed names when encrypted)."""
        name = chunk_hash
        if self.encryption:
            from storg.storage.keys import load_key_file
            name = load_key_file(self.key_file).chunk_name(chunk_hash)
        return self.data_dir(nid) / "chunks" / name[:2] / name

    def read_chunk(self, nid: str, chunk_hash: str) -> bytes:
        """The plaintext of ``nid``'s copy of a chunk (opened with the key file when encrypted)."""
        path = self.chunk_path(nid, chunk_hash)
        raw = path.read_bytes()
        if not self.encryption:
            return raw
        from storg.storage.chunks import open_sealed
        from storg.storage.keys import load_key_file
        return open_sealed(load_key_file(self.key_file), path, path.name, raw, chunk_hash)[1]

    def chunk_files(self, nid: str) -> dict[str, Path]:
        """Chunk hash -> file, for every chunk file in ``nid``'s store (read only: safe on a live node)."""
        root = self.data_dir(nid) / "chunks"
        ring = None
        if self.encryption:
            from storg.storage.keys import load_key_file
            ring = load_key_file(self.key_file)
        found: dict[str, Path] = {}
        for f in root.glob("??/*"):
            if len(f.name) != 64 or f.parent.name == "tmp":
                continue
            if ring is None:
                found[f.name] = f
                continue
            from storg.storage.chunks import SEALED_HEADER_BYTES, open_sealed
            try:
                with open(f, "rb") as fh:
                    head = fh.read(SEALED_HEADER_BYTES)
                found[open_sealed(ring, f, f.name, head)[0]] = f
            except Exception:  # deleted meanwhile, or damaged: not a chunk of anything
                continue
        return found

    def log_text(self, nid: str) -> str:
        try:
            return self.nodes[nid].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class FirewallUnavailable(RuntimeError):
    """This machine cannot cut links (not root, no iptables, no netfilter)."""


def _cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted and writable, if anywhere."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return None


class LinkFirewall:
    """Cuts and heals the links between the nodes of a :class:`ProcCluster` with iptables.

    Why this shape: the nodes share one loopback interface, so a link is
    named by addresses.  Every node has its own address (``hosts`` of
    :meth:`ProcCluster.create`) and binds its outgoing Raft connections to
    it, so ``-s A -d B -j DROP`` cuts A's Raft traffic to B.  Nodes also
    talk to each other's *client* ports (chunk traffic) from unbound
    sockets, whose source is 127.0.0.1 like every storgctl's; to cut those
    too, each node runs in a cgroup v2 group of its own and a second rule
    drops what that group sends to B's address (``-m cgroup --path``).
    Clients (storgctl, in no such group) can still reach every node, as in
    Jepsen's partitions: only node-to-node links are cut.  Where cgroup v2
    is not writable, only Raft traffic is cut.

    Packets are dropped, not refused, so a cut link looks like a dead
    network: connections hang, retransmit, and resume when healed.  All
    rules live in a chain of their own, jumped to from OUTPUT, removed by
    :meth:`close`.  Create the firewall before starting the nodes.
    """

    def __init__(self, cluster: ProcCluster, use_cgroups: bool = True) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise FirewallUnavailable(reason)
        hosts = [n.host for n in cluster.nodes.values()]
        if len(set(hosts)) != len(hosts):
            raise ValueError("every node needs its own host (ProcCluster.create(hosts=...))")
        self.cluster = cluster
        self._sweep_stale()
        self.chain = f"storg-{os.getpid()}-{random.SystemRandom().randrange(16**6):06x}"
        self.blocked: set[tuple[str, str]] = set()
        self.cgroups: dict[str, Path] = {}
        self._cgroup_root = _cgroup2_root() if use_cgroups else None
        self._iptables("-N", self.chain)
        self._iptables("-I", "OUTPUT", "-j", self.chain)
        if self._cgroup_root is not None:
            for nid, node in cluster.nodes.items():
                group = self._cgroup_root / f"{self.chain}-{nid}"
                group.mkdir()
                self.cgroups[nid] = group
                node.cgroup = group

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why links cannot be cut on this machine, or None if they can."""
        if os.geteuid() != 0:
            return "cutting links needs root (iptables)"
        if shutil.which("iptables") is None:
            return "no iptables binary (apt-get install -y iptables)"
        probe = subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True, check=False)
        if probe.returncode != 0:
            return "iptables does not work here: " + probe.stderr.decode(errors="replace").strip()
        return None

    @staticmethod
    def _sweep_stale() -> None:
        """Remove the chains and cgroups of firewalls whose process died without closing them."""
        listing = subprocess.run(["iptables", "-w", "-S"], capture_output=True, check=False)
        for line in listing.stdout.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[0] != "-N" or not parts[1].startswith("storg-"):
                continue
            chain = parts[1]
            try:
                os.kill(int(chain.split("-")[1]), 0)
                continue  # its owner still runs
            except (ValueError, IndexError):
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            for args in (["-D", "OUTPUT", "-j", chain], ["-F", chain], ["-X", chain]):
                subprocess.run(["iptables", "-w", *args], capture_output=True, check=False)
            root = _cgroup2_root()
            if root is not None:
                for group in root.glob(f"{chain}-*"):
                    try:
                        group.rmdir()
                    except OSError:
                        pass

    def _iptables(self, *args: str) -> None:
        out = subprocess.run(["iptables", "-w", *args], capture_output=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")

    def _rules(self, src: str, dst: str) -> list[list[str]]:
        a, b = self.cluster.nodes[src], self.cluster.nodes[dst]
        rules = [["-s", a.host, "-d", b.host, "-j", "DROP"]]
        if src in self.cgroups:
            assert self._cgroup_root is not None  # cgroups are made only under it
            path = "/" + str(self.cgroups[src].relative_to(self._cgroup_root))
            rules.append(["-m", "cgroup", "--path", path, "-d", b.host, "-j", "DROP"])
        return rules

    def block(self, src: str, dst: str) -> None:
        """Drop what ``src`` sends to ``dst`` (one direction)."""
        if (src, dst) in self.blocked or src == dst:
            return
        for rule in self._rules(src, dst):
            self._iptables("-A", self.chain, *rule)
        self.blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        if (src, dst) not in self.blocked:
            return
        for rule in self._rules(src, dst):
            self._iptables("-D", self.chain, *rule)
        self.blocked.discard((src, dst))

    def cut(self, a: str, b: str) -> None:
        """Cut the link between ``a`` and ``b`` both ways."""
        self.block(a, b)
        self.block(b, a)

    def partition(self, *groups: list[str]) -> None:
        """Exactly these sides: links inside a group work, links across are cut.

        Nodes named in no group form one more group.  Rules that stay are
        not touched, so a link cut before and after never flickers open.
        """
        named = {n for g in groups for n in g}
        sides = [list(g) for g in groups]
        rest = [n for n in self.cluster.nodes if n not in named]
        if rest:
            sides.append(rest)
        side_of = {n: i for i, g in enumerate(sides) for n in g}
        wanted = {(a, b) for a in side_of for b in side_of if side_of[a] != side_of[b]}
        for link in sorted(self.blocked - wanted):
            self.unblock(*link)
        for link in sorted(wanted - self.blocked):
            self.block(*link)

    def isolate(self, nid: str) -> None:
        """Cut ``nid`` off from every other node."""
        self.partition([nid])

    def heal(self) -> None:
        for link in sorted(self.blocked):
            self.unblock(*link)

    def close(self) -> None:
        """Remove the chain; remove the cgroups once their nodes are gone (close the cluster first)."""
        self.blocked.clear()
        subprocess.run(["iptables", "-w", "-D", "OUTPUT", "-j", self.chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-w", "-F", self.chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-w", "-X", self.chain], capture_output=True, check=False)
        for nid, group in self.cgroups.items():
            node = self.cluster.nodes.get(nid)
            if node is not None and node.cgroup == group:
                node.cgroup = None
            try:
                group.rmdir()
            except OSError:
                pass  # a process is still inside: left for the operator, named after our chain
