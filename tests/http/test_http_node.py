"""``http_listen`` on a node in this process: TLS as on the other ports, and what each path says.

Two nodes, both real ``NodeService`` objects on this reactor:

* a single-node cluster with a ``tls`` section (it elects itself at once):
  every path over HTTPS with a client certificate from the cluster's CA;
  no certificate, no answer.  /metrics is parsed with prometheus_client's
  own parser, and figures are checked to move with what the node does;
* a node of a three-node config started alone, without TLS: it can never
  have a leader, so /health and /ready must say 503 with a reason, and the
  status JSON must call the cluster unavailable and the node cut off.

Requests run in a thread (urllib, blocking) so the reactor serves them.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from storg.config import load_config
from storg.net.certs import add_client, init_dir
from storg.server.service import NodeService
from storg.testing.devcluster import free_port
from storg.wire import ProbeWrite

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _wait(condition, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def _start(tmp_path: Path, cfg: dict) -> NodeService:
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    service = NodeService(load_config(path), reactor)
    service.startService()
    return service


@pytest_twisted.async_yield_fixture
async def tls_node(tmp_path: Path):
    certs = tmp_path / "certs"
    init_dir(str(certs), ["n1"])
    add_client(str(certs), "reader", "readonly")
    peer, client, http = free_port(), free_port(), free_port()
    service = _start(tmp_path, {
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{peer}",
        "client_listen": f"127.0.0.1:{client}", "http_listen": f"127.0.0.1:{http}",
        "cluster": {"n1": {"peer": f"127.0.0.1:{peer}", "client": f"127.0.0.1:{client}"}},
        "tls": {"ca": "certs/ca.pem", "cert": "certs/n1.pem", "key": "certs/n1-key.pem"},
    })
    service.url = f"https://127.0.0.1:{http}"
    service.certs = certs
    try:
        await _wait(lambda: service.node is not None and service.node.is_leader(), "self-election")
        yield service
    finally:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def lonely_node(tmp_path: Path):
    ports = {nid: (free_port(), free_port()) for nid in ("n1", "n2", "n3")}
    http = free_port()
    service = _start(tmp_path, {
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{ports['n1'][0]}",
        "client_listen": f"127.0.0.1:{ports['n1'][1]}", "http_listen": f"127.0.0.1:{http}",
        "cluster": {nid: {"peer": f"127.0.0.1:{p}", "client": f"127.0.0.1:{c}"} for nid, (p, c) in ports.items()},
    })
    service.url = f"http://127.0.0.1:{http}"
    try:
        yield service
    finally:
        await service.stopService()


def _context(certs: Path | None, name: str | None) -> ssl.SSLContext | None:
    if certs is None:
        return None
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if name is not None:
        ctx.load_cert_chain(str(certs / f"{name}.pem"), str(certs / f"{name}-key.pem"))
    return ctx


def _fetch(url: str, ctx: ssl.SSLContext | None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def get(service: NodeService, path: str, name: str | None = "admin", method: str = "GET"):
    ctx = _context(getattr(service, "certs", None), name)
    return await deferToThread(_fetch, service.url + path, ctx, method)


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, by (name, sorted labels); the parser rejects a malformed text."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


@pytest_twisted.ensureDeferred
async def test_metrics_over_tls_follow_what_the_node_does(tls_node):
    status, headers, body = await get(tls_node, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    before = samples(body)
    assert before[("storg_raft_has_leader", ())] == 1
    assert before[("storg_raft_is_leader", ())] == 1
    assert before[("storg_raft_voters", ())] == 1
    assert before[("storg_node_info", (("node", "n1"),))] == 1
    assert ("storg_disk_reserve_bytes", ()) in before
    assert before[("process_resident_memory_bytes", ())] > 0
    commit = before[("storg_raft_commit_index", ())]
    # A write through the client port: the commit index moves, the WAL fsynced, the request is counted.
    from storg.net.connection import connect
    from storg.net.credentials import TLSCredentials
    certs = tls_node.certs
    creds = TLSCredentials(certs / "ca.pem", certs / "admin.pem", certs / "admin-key.pem")
    conn = await connect(reactor, str(tls_node.config.client_listen), timeout=10, tls=creds.client())
    try:
        await conn.request(lambda rid: ProbeWrite(rid, b"x"))
    finally:
        conn.close()
    _, _, body = await get(tls_node, "/metrics")
    after = samples(body)
    assert after[("storg_raft_commit_index", ())] > commit
    assert after[("storg_raft_proposals_applied_total", ())] >= after[("storg_raft_commit_index", ())] - 0
    assert after[("storg_disk_wal_fsync_duration_seconds_count", ())] > \
        before[("storg_disk_wal_fsync_duration_seconds_count", ())]
    assert after[("storg_client_request_duration_seconds_count",
                  (("operation", "probe_write"), ("outcome", "ok")))] == 1
    assert after[("storg_disk_wal_bytes", ())] > before[("storg_disk_wal_bytes", ())]
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("storg_")], \
        "storg metrics must live in the node's own registry, not the global one"


@pytest_twisted.ensureDeferred
async def test_a_readonly_certificate_may_read_and_no_certificate_gets_nothing(tls_node):
    status, _, body = await get(tls_node, "/health", name="reader")
    assert status == 200 and json.loads(body)["ok"] is True
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await get(tls_node, "/health", name=None)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await deferToThread(_fetch, tls_node.url.replace("https", "http") + "/health", None)


@pytest_twisted.ensureDeferred
async def test_health_ready_status_and_the_page_on_a_serving_node(tls_node):
    status, headers, body = await get(tls_node, "/health")
    health = json.loads(body)
    assert status == 200 and health["ok"] and health["leader"] == "n1" and headers["Cache-Control"] == "no-store"
    status, _, body = await get(tls_node, "/ready")
    assert status == 200 and json.loads(body)["ok"]
    status, _, body = await get(tls_node, "/api/status")
    view = json.loads(body)
    assert status == 200
    assert (view["health"], view["leader"], view["failure_tolerance"], view["cut_off"]) == ("healthy", "n1", 0, False)
    assert [(m["id"], m["role"], m["reachable"]) for m in view["members"]] == [("n1", "leader", True)]
    assert view["leader_history"][0]["leader"] == "n1"
    for path in ("/", "/ui"):
        status, headers, body = await get(tls_node, path)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'src="/static/app.js"' in body and b"http://" not in body and b"https://" not in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = await get(tls_node, "/static/app.js")
    assert status == 200 and b"/api/status" in body and headers["Content-Type"].startswith("text/javascript")
    assert (await get(tls_node, "/nothing"))[0] == 404
    assert (await get(tls_node, "/static/../setup.py"))[0] == 404
    assert (await get(tls_node, "/metrics", method="POST"))[0] == 405


@pytest_twisted.ensureDeferred
async def test_the_snapshot_is_built_on_the_reactor_and_rendered_in_a_thread(tls_node):
    metrics = tls_node.metrics
    threads: dict[str, list[str]] = {"publish": [], "collect": []}
    publish, collect = metrics.publish, metrics.published.collect

    def spy_publish():
        threads["publish"].append(threading.current_thread().name)
        publish()

    def spy_collect():
        threads["collect"].append(threading.current_thread().name)
        return collect()

    metrics.publish = spy_publish
    metrics.published.collect = spy_collect
    status, _, _ = await get(tls_node, "/metrics")
    assert status == 200
    assert threads["publish"] == [threading.main_thread().name]
    assert threads["collect"] and threading.main_thread().name not in threads["collect"]


@pytest_twisted.ensureDeferred
async def test_a_node_without_a_leader_says_so_with_503_and_a_reason(lonely_node):
    status, _, body = await get(lonely_node, "/health")
    health = json.loads(body)
    assert status == 503 and health["ok"] is False and "no leader" in health["reason"]
    status, _, body = await get(lonely_node, "/ready")
    assert status == 503 and "leader" in json.loads(body)["reason"]
    view_text = [b""]

    async def cut_off() -> bool:
        view_text[0] = (await get(lonely_node, "/api/status"))[2]
        return json.loads(view_text[0])["cut_off"]

    for _ in range(50):
        if await cut_off():
            break
        await deferLater(reactor, 0.1, lambda: None)
    view = json.loads(view_text[0])
    assert view["cut_off"] is True and view["health"] == "unavailable" and view["failure_tolerance"] == 0
    assert {m["id"]: m["reachable"] for m in view["members"]} == {"n1": True, "n2": False, "n3": False}
    assert all(m["error"] for m in view["members"] if m["id"] != "n1")
    status, _, body = await get(lonely_node, "/metrics")
    assert status == 200 and samples(body)[("storg_raft_has_leader", ())] == 0


@pytest_twisted.ensureDeferred
async def test_the_readme_lists_every_metric_and_no_other(tls_node):
    """README.rst, "Metrics and the status page", is the list operators alert on: it must not drift."""
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text()
    section = readme.split("Metrics and the status page", 1)[1].split("\nGuarantees\n", 1)[0]
    listed = {name.removesuffix("_total") for name in re.findall(r"``(storg_[a-z_]+)", section)}
    listed.add("storg_raft_proposals_applied")  # written "``..._committed_total`` / ``_applied_total``"
    _, _, body = await get(tls_node, "/metrics")
    served = {f.name for f in text_string_to_metric_families(body.decode()) if f.name.startswith("storg_")}
    assert served - listed == set(), "served but not in the README"
    assert listed - served == set(), "in the README but not served"
