"""Fixtures and options of the fault tests.

``--soak=SECONDS`` makes the mixed-nemesis scenario run that long (default:
about a minute); ``--fault-seed=N`` fixes the seed of the nemesis and the
workers (default: a fresh one, printed in each summary line).  At the end of
the run one summary line per scenario is printed: operations checked,
faults injected, time, verdict.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from fault_harness import SUMMARY, Nemesis, Workload, verify

from storg.testing.devcluster import (
    FirewallUnavailable,
    LinkFirewall,
    ProcCluster,
    loopback_hosts,
    wait_for,
)


def pytest_addoption(parser):
    group = parser.getgroup("storg faults")
    group.addoption("--soak", type=float, default=None, metavar="SECONDS",
                    help="run the mixed-nemesis fault scenario for this many seconds")
    group.addoption("--fault-seed", type=int, default=None, metavar="N",
                    help="seed of the fault scenarios' nemesis and workers")


def pytest_terminal_summary(terminalreporter):
    if not SUMMARY:
        return
    tr = terminalreporter
    tr.section("storg fault scenarios")
    for row in SUMMARY:
        tr.write_line(row["line"])
    ops = sum(r["checked"] for r in SUMMARY)
    faults = sum(r["faults_total"] for r in SUMMARY)
    seconds = sum(r["seconds"] for r in SUMMARY)
    bad = [r["scenario"] for r in SUMMARY if not r["linearizable"]]
    tr.write_line(f"faults total: {ops} operations checked, {faults} faults injected, "
                  f"{len(SUMMARY)} scenarios, {seconds:.0f} s; "
                  + (f"NOT linearizable: {', '.join(bad)}" if bad else "all linearizable"))


def firewall_for(cluster: ProcCluster) -> LinkFirewall:
    """A firewall, or a skip where the machine truly cannot cut links (not root).

    Root without a working iptables is a broken setup, not a reason to
    skip: CI runs as root and must run these tests.  Set
    STORG_FAULTS_REQUIRE_FIREWALL=1 to fail instead of skipping anywhere.
    """
    required = os.environ.get("STORG_FAULTS_REQUIRE_FIREWALL") == "1"
    if os.geteuid() != 0 and not required:
        pytest.skip("cutting links needs root (iptables on the loopback interface)")
    try:
        return LinkFirewall(cluster)
    except FirewallUnavailable as exc:
        pytest.fail(f"cannot cut links: {exc}")


class Scenario:
    """One cluster of three real nodes, its nemesis and its workers, for one test."""

    def __init__(self, name: str, root, seed: int, net: bool, raft: dict | None) -> None:
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.cluster = ProcCluster.create(root, size=3, hosts=loopback_hosts(3, self.rng),
                                          raft=raft, files={"chunk_size": 64 * 1024})
        self.firewall = firewall_for(self.cluster) if net else None
        self.nemesis = Nemesis(self.cluster, self.firewall, self.rng)
        self.workload: Workload | None = None

    def boot(self) -> Scenario:
        self.cluster.start_all()
        try:
            wait_for(self.cluster.leader, 60, "a first leader", 0.2)
        except AssertionError as exc:
            logs = "\n".join(f"--- {n} (alive: {node.alive()}):\n{self.cluster.log_text(n)[-1500:]}"
                             for n, node in self.cluster.nodes.items())
            raise AssertionError(f"{exc}\n{logs}") from None
        return self

    def workers(self, keys: int = 3, **kw) -> Workload:
        self.workload = Workload(self.cluster, [f"/reg/k{i}" for i in range(keys)],
                                 seed=self.seed, **kw)
        self.nemesis._clock = self.workload.now
        return self.workload.start()

    def check(self):
        """Stop the workers, heal everything, verify; the summary line is printed and kept."""
        self.workload.stop()
        return verify(self.cluster, self.workload, self.nemesis, self.name, self.seed, self.started)

    def close(self) -> None:
        if self.workload is not None:
            self.workload.close()
        self.cluster.close()
        if self.firewall is not None:
            self.firewall.close()


@pytest.fixture
def scenario(request, tmp_path):
    """Factory: ``scenario(net=True)`` starts a cluster (with a firewall if ``net``)."""
    made: list[Scenario] = []
    option = request.config.getoption("--fault-seed")

    def make(net: bool = False, raft: dict | None = None) -> Scenario:
        seed = option if option is not None else random.SystemRandom().randrange(2**31)
        name = request.node.name.removeprefix("test_")
        root = tmp_path / f"c{len(made)}"
        root.mkdir()
        s = Scenario(name, root, seed, net, raft)
        made.append(s)
        return s.boot()

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def soak_seconds(request) -> float | None:
    return request.config.getoption("--soak")
