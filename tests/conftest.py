"""Suite-wide hooks.

When a test that ran real node processes fails, the failure report carries
the tail of each node's log.  A process test that fails once in a hundred CI
runs is only diagnosable from what the nodes said at the time: the temporary
folders with the full logs are gone with the CI machine.

The ``process`` marker (pytest.ini) is on every test that starts real
``twistd storg`` nodes or cuts links with iptables: each such module says
``pytestmark = pytest.mark.process``, so ``-m "not process"`` is the quick
loop.  A test without the marker that starts a node or a firewall anyway
fails at once (see :func:`_guard`), so the marker cannot silently drift.

Clusters of the suite run their ``storgctl`` commands (status polls
included) from a shared fork server (:mod:`storg.testing.storgctl_server`):
the real ``storg.cli.main.main`` in a child process per command, without an
interpreter start-up each time.
"""

from __future__ import annotations

import pytest

from storg.testing import devcluster
from storg.testing.devcluster import LinkFirewall, ProcCluster

_current: list[pytest.Item] = []


def pytest_configure(config):
    devcluster.STORGCTL_SERVER = True
    _guard(ProcCluster, "start")
    _guard(LinkFirewall, "__init__")


def pytest_unconfigure(config):
    devcluster.close_storgctl_servers()


def _guard(cls, name: str) -> None:
    """Make ``cls.name`` fail inside a test (or its fixtures) that lacks the ``process`` marker."""
    original = getattr(cls, name)
    if getattr(original, "_process_guard", False):
        return

    def guarded(self, *args, **kwargs):
        item = _current[-1] if _current else None
        if item is not None and item.get_closest_marker("process") is None:
            raise RuntimeError(f"{item.nodeid} starts real nodes or cuts links ({cls.__name__}.{name}) "
                               "but is not marked `process` (pytestmark = pytest.mark.process)")
        return original(self, *args, **kwargs)

    guarded._process_guard = True
    guarded.__wrapped__ = original
    setattr(cls, name, guarded)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()

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
