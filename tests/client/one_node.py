"""One real node in this process (Raft of one, the file store, its client port), for client-library tests.

Each call crosses the real wire, handler, proposal and state machine, on
loopback without TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater

from storg.client.api import StorgClient
from storg.config import load_config
from storg.server.service import NodeService
from storg.testing.devcluster import free_port


@asynccontextmanager
async def one_node_client(tmp_path: Path, files: dict[str, Any] | None = None) -> AsyncIterator[StorgClient]:
    """A client of a new single-node cluster, once it leads; ``client.service`` is the node."""
    peer, port = free_port(), free_port()
    config = tmp_path / "n1.yaml"
    settings: dict[str, Any] = {
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{peer}",
        "client_listen": f"127.0.0.1:{port}",
        "cluster": {"n1": {"peer": f"127.0.0.1:{peer}", "client": f"127.0.0.1:{port}"}},
    }
    if files:
        settings["files"] = files
    config.write_text(yaml.safe_dump(settings))
    service = NodeService(load_config(config), reactor)
    service.startService()
    for _ in range(300):
        if service.node is not None and service.node.is_leader():
            break
        await deferLater(reactor, 0.02, lambda: None)
    c = StorgClient([f"127.0.0.1:{port}"], reactor=reactor, timeout=10)
    c.service = service  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.close()
        await service.stopService()
