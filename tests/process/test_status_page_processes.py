"""The status page in a real browser, and /metrics and /health of real nodes (issue 19).

One module-scoped TLS cluster of three ``twistd storg`` nodes with
``http_listen`` and ``log: {format: json}`` (each node's log must be JSON
lines naming it).  The metrics test scrapes every node over HTTPS with the
admin's certificate.  The browser test drives Debian's headless Chromium
with selenium and chromium-driver (no browser is downloaded) at the page of
a follower, through :class:`~storg.testing.cert_proxy.CertProxy` (the
browser holds no certificate; the proxy holds the admin's): the page shows
three members and the leader; the leader is killed and within a few
seconds the page marks it unreachable, the cluster degraded and shows the
new leader; it is started again and the page shows the cluster healthy.
Screenshots are saved under ``$STORG_ARTIFACTS`` (default
``test-artifacts/``) as the test's artefacts.

Without chromium and chromium-driver the browser test is skipped, unless
``STORG_BROWSER_REQUIRED=1`` (CI, .ci/run), which makes it fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storg.testing.cert_proxy import CertProxy
from storg.testing.devcluster import REPO, ProcCluster, wait_for

pytestmark = pytest.mark.process

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_DEADLINE = 15.0
"""Seconds the page may take to show a change: an election (~1 s), the poll (1 s), the
unreachable threshold (2.5 s) and the page's own poll (1 s), with room for a loaded CI machine."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcCluster.create(tmp_path_factory.mktemp("status"), size=3, http=True,
                           extra={"log": {"format": "json"}})
    c.start_all()
    try:
        wait_for(c.everyone_follows, 60, "a leader everyone follows", 0.2)
        yield c
    finally:
        c.close()


def fetch(cluster: ProcCluster, nid: str, path: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(cluster.certs / "ca.pem"))
    ctx.load_cert_chain(str(cluster.certs / "admin.pem"), str(cluster.certs / "admin-key.pem"))
    try:
        with urllib.request.urlopen(f"https://{cluster.nodes[nid].http_address}{path}", context=ctx,
                                    timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(cluster: ProcCluster, nid: str) -> dict[tuple[str, tuple], float]:
    status, body = fetch(cluster, nid, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_every_node_serves_metrics_and_health(cluster):
    leader = cluster.everyone_follows()
    assert leader is not None
    result = cluster.storgctl("put", "-", "/hello.txt", input=b"hello metrics\n")
    assert result.returncode == 0, result.stderr

    def settled():
        by_node = {nid: scrape(cluster, nid) for nid in cluster.nodes}
        return by_node if all(m[("storg_namespace_files", ())] == 1 for m in by_node.values()) else None

    by_node = wait_for(settled, 20, "every node to apply the put")
    for nid, m in by_node.items():
        assert m[("storg_raft_is_leader", ())] == (1 if nid == leader else 0), nid
        assert m[("storg_raft_has_leader", ())] == 1
        assert m[("storg_raft_term", ())] == by_node[leader][("storg_raft_term", ())]
        assert fetch(cluster, nid, "/health")[0] == 200
        assert fetch(cluster, nid, "/ready")[0] == 200
    lead = by_node[leader]
    followers = sorted(set(cluster.nodes) - {leader})
    for peer in followers:
        assert (("storg_raft_follower_match_lag_entries", (("peer", peer),))) in lead
        assert lead[("storg_peer_connected", (("peer", peer),))] == 1
        assert lead[("storg_peer_sent_bytes_total", (("peer", peer),))] > 0
        assert 0 < lead[("storg_peer_round_trip_time_seconds", (("peer", peer),))] < 1
    assert lead[("storg_client_request_duration_seconds_count", (("operation", "put"), ("outcome", "ok")))] >= 1
    assert not any(name == "storg_raft_follower_match_lag_entries" for name, _ in by_node[followers[0]])


def test_json_logs_name_the_node_on_every_line(cluster):
    for nid in cluster.nodes:
        lines = [line for line in cluster.log_text(nid).splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        assert events and all(e["log_node"] == nid for e in events), nid
        started = [e for e in events if e.get("log_namespace") == "storg.service" and " started in " in e["text"]]
        assert started and started[0]["log_level"]["name"] == "info", nid


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        if os.environ.get("STORG_BROWSER_REQUIRED") == "1":
            pytest.fail(f"STORG_BROWSER_REQUIRED=1 but {', '.join(missing)} missing")
        pytest.skip(f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _page(driver) -> dict:
    """What the page shows now, read from its DOM (not from the JSON behind it)."""
    rows = driver.find_elements("css selector", "#members tbody tr")
    return {
        "health": driver.find_element("id", "health").text,
        "leader": driver.find_element("id", "leader").text,
        "rows": {r.get_attribute("data-id"): r.get_attribute("data-role") for r in rows},
        "tolerance": driver.find_element("id", "tolerance").text,
    }


def _artefacts() -> Path:
    path = Path(os.environ.get("STORG_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_status_page_follows_a_leader_failure_in_a_real_browser(cluster):
    leader = wait_for(cluster.everyone_follows, 30, "a leader everyone follows")
    viewed = sorted(set(cluster.nodes) - {leader})[0]
    driver = _browser_or_skip()
    proxy = CertProxy(cluster.nodes[viewed].http_address, cluster.certs / "ca.pem",
                      cluster.certs / "admin.pem", cluster.certs / "admin-key.pem")
    seen: list[dict] = []

    def until(check, timeout: float, what: str) -> dict:
        def probe():
            page = _page(driver)
            seen[:] = [page]
            return page if check(page) else None
        try:
            return wait_for(probe, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page showed {seen}") from None

    try:
        driver.get(proxy.url + "/")
        page = until(lambda p: p["health"] == "healthy" and len(p["rows"]) == 3 and p["leader"] == leader,
                     PAGE_DEADLINE, f"the page to show 3 members and leader {leader}")
        assert page["rows"][leader] == "leader" and page["tolerance"] == "1 node"
        assert f"seen from {viewed}" in driver.find_element("id", "viewed-from").text
        driver.save_screenshot(str(_artefacts() / "status-page-healthy.png"))

        cluster.kill(leader, signal.SIGKILL)
        page = until(lambda p: p["rows"].get(leader) == "unreachable" and p["health"] == "degraded"
                     and p["leader"] not in ("", "none", "…", leader), PAGE_DEADLINE,
                     f"the page to mark {leader} unreachable, the cluster degraded and a new leader")
        new_leader = page["leader"]
        assert page["rows"][new_leader] == "leader" and page["tolerance"] == "0 nodes"
        history = driver.find_element("id", "history").text
        assert new_leader in history and leader in history
        driver.save_screenshot(str(_artefacts() / "status-page-degraded.png"))

        cluster.start(leader)
        until(lambda p: p["health"] == "healthy" and p["rows"].get(leader) in ("follower", "leader"),
              PAGE_DEADLINE + 15, f"the page to show {leader} back and the cluster healthy")
        driver.save_screenshot(str(_artefacts() / "status-page-recovered.png"))
        status, body = fetch(cluster, viewed, "/api/status")
        assert status == 200 and json.loads(body)["health"] == "healthy"
    finally:
        driver.quit()
        proxy.close()
