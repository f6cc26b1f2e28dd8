"""Fixtures and options of the fault tests.

``--soak=SECONDS`` makes the mixed-nemesis scenario run that long (default:
half a minute, and on until every kind of fault was injected once);
``--fault-seed=N`` fixes the seed of the nemesis and the workers (default: a
fresh one, printed in each summary line).  At the end of
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
    """Three real nodes, a nemesis and workers for one test.

    The nodes may be a cluster an earlier scenario of the session used and
    left healthy (see :class:`ClusterPool`): each scenario has keys of its
    own (``/reg/NAME/k0`` ...), which start absent, as on a new cluster, and
    its own nemesis, workers and history; the final checks (convergence,
    durability, linearizability) are the same.
    """

    def __init__(self, name: str, seed: int, lease: Lease) -> None:
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.lease = lease
        self.cluster = lease.cluster
        self.firewall = lease.firewall
        self.nemesis = Nemesis(self.cluster, self.firewall, self.rng)
        self.workload: Workload | None = None

    def boot(self) -> Scenario:
        try:
            self.lease.ready()
        except AssertionError as exc:
            logs = "\n".join(f"--- {n} (alive: {node.alive()}):\n{self.cluster.log_text(n)[-1500:]}"
                             for n, node in self.cluster.nodes.items())
            raise AssertionError(f"{exc}\n{logs}") from None
        return self

    def workers(self, keys: int = 3, **kw) -> Workload:
        self.workload = Workload(self.cluster, [f"/reg/{self.name}/k{i}" for i in range(keys)],
                                 seed=self.seed, **kw)
        self.nemesis._clock = self.workload.now
        return self.workload.start()

    def check(self):
        """Stop the workers, heal everything, verify; the summary line is printed and kept."""
        self.workload.stop()
        report = verify(self.cluster, self.workload, self.nemesis, self.name, self.seed, self.started)
        self.lease.healthy = True  # verified: healed, converged, every node serving
        return report

    def close(self) -> None:
        if self.workload is not None:
            self.workload.close()
        self.lease.release()


class Lease:
    """One scenario's use of a cluster; the cluster goes back to the pool only if it was verified."""

    def __init__(self, pool: ClusterPool, net: bool, cluster: ProcCluster,
                 firewall: LinkFirewall | None, fresh: bool) -> None:
        self.pool, self.net, self.cluster, self.firewall, self.fresh = pool, net, cluster, firewall, fresh
        self.healthy = False

    def ready(self) -> None:
        if self.fresh:
            self.cluster.start_all()
        wait_for(self.cluster.leader, 60, "a first leader", 0.2)

    def release(self) -> None:
        self.pool.give_back(self)


class ClusterPool:
    """Clusters of three nodes (one with a firewall, one without) that scenarios take turns on.

    Starting three nodes and electing a first leader is a few seconds of a
    two-core machine per scenario; a cluster that the last scenario left
    verified (every node running and serving, links healed, logs converged)
    serves the next one of the module.  A scenario that failed, or did not get as far as
    its checks, takes its cluster with it: the next one starts afresh.
    """

    def __init__(self, root_factory) -> None:
        self._root_factory = root_factory
        self._idle: dict[bool, tuple[ProcCluster, LinkFirewall | None]] = {}

    def take(self, net: bool, rng: random.Random) -> Lease:
        idle = self._idle.pop(net, None)
        if idle is not None:
            cluster, firewall = idle
            if all(node.alive() for node in cluster.nodes.values()) and not (firewall and firewall.blocked):
                return Lease(self, net, cluster, firewall, fresh=False)
            self._close(cluster, firewall)
        root = self._root_factory()
        cluster = ProcCluster.create(root, size=3, hosts=loopback_hosts(3, rng),
                                     files={"chunk_size": 64 * 1024})
        try:
            firewall = firewall_for(cluster) if net else None
        except BaseException:
            cluster.close()
            raise
        return Lease(self, net, cluster, firewall, fresh=True)

    def give_back(self, lease: Lease) -> None:
        if lease.healthy and lease.net not in self._idle:
            self._idle[lease.net] = (lease.cluster, lease.firewall)
        else:
            self._close(lease.cluster, lease.firewall)

    @staticmethod
    def _close(cluster: ProcCluster, firewall: LinkFirewall | None) -> None:
        cluster.close()
        if firewall is not None:
            firewall.close()

    def close(self) -> None:
        for cluster, firewall in self._idle.values():
            self._close(cluster, firewall)
        self._idle.clear()


@pytest.fixture(scope="module")
def cluster_pool(tmp_path_factory):
    pool = ClusterPool(lambda: tmp_path_factory.mktemp("faults"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def scenario(request, cluster_pool):
    """Factory: ``scenario(net=True)`` gives a running cluster (with a firewall if ``net``)."""
    made: list[Scenario] = []
    option = request.config.getoption("--fault-seed")

    def make(net: bool = False) -> Scenario:
        seed = option if option is not None else random.SystemRandom().randrange(2**31)
        name = request.node.name.removeprefix("test_")
        lease = cluster_pool.take(net, random.Random(seed))
        s = Scenario(name, seed, lease)
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
