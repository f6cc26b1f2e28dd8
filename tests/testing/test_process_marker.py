"""The quick loop's contract: a test that starts real nodes must carry the ``process`` marker.

``-m "not process"`` must leave out exactly the tests that start
``twistd storg`` nodes or cut links; tests/conftest.py makes the unmarked
ones fail at the first node or firewall they start, which this checks.
"""

from __future__ import annotations

import pytest

from storg.testing import devcluster
from storg.testing.devcluster import LinkFirewall, ProcCluster


def test_an_unmarked_test_cannot_start_a_node(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=1)
    try:
        with pytest.raises(RuntimeError, match="not marked `process`"):
            cluster.start("n1")
        assert cluster.nodes["n1"].proc is None
    finally:
        cluster.close()


def test_an_unmarked_test_cannot_cut_links(tmp_path):
    cluster = ProcCluster.create(tmp_path, size=2, hosts=devcluster.loopback_hosts(2))
    with pytest.raises(RuntimeError, match="not marked `process`"):
        LinkFirewall(cluster)


def test_the_suite_runs_storgctl_from_the_fork_server(tmp_path):
    assert devcluster.STORGCTL_SERVER
    assert ProcCluster.create(tmp_path, size=1).storgctl_server
