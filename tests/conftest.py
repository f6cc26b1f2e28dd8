"""Suite-wide hooks.

When a test that ran real node processes fails, the failure report carries
the tail of each node's log.  A process test that fails once in a hundred CI
runs is only diagnosable from what the nodes said at the time: the temporary
folders with the full logs are gone with the CI machine.
"""

from __future__ import annotations

import pytest

from storg.testing.devcluster import ProcCluster

LOG_TAIL_LINES = 60
NOISE = ("Starting factory", "Stopping factory")
"""Twisted's per-connection factory lines crowd out everything that matters."""


def _clusters(item: pytest.Item) -> list[ProcCluster]:
    found = []
    for value in getattr(item, "funcargs", {}).values():
        for candidate in (value, getattr(value, "cluster", None)):
            if isinstance(candidate, ProcCluster) and candidate not in found:
                found.append(candidate)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for cluster in _clusters(item):
        for nid in cluster.nodes:
            lines = [line for line in cluster.log_text(nid).splitlines()
                     if not any(noise in line for noise in NOISE)]
            state = "running" if cluster.nodes[nid].alive() else "not running"
            report.sections.append((f"log of {nid} ({state}), last {LOG_TAIL_LINES} lines",
                                    "\n".join(lines[-LOG_TAIL_LINES:])))
