"""Nodes with real disk storage, the file store state machine and snapshots, on one task.Clock.

Raft messages go through :class:`~storg.testing.memory.MemoryNetwork`; snapshot
streams go through in-memory connections (``twisted.test.iosim``) between
the leader's real RequestConnection and the follower's real client port
protocol, pumped on every tick.  Storage runs inline (no threads), so a
test is deterministic and needs no sleeping.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from twisted.internet.task import Clock
from twisted.test import iosim

from storg.fsm.machine import FileStoreStateMachine
from storg.net.connection import RequestConnection
from storg.node.raft_node import RaftNode, run_inline
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.types import ConfState, Role, SnapshotMeta
from storg.server.client_port import ClientPortFactory
from storg.server.snapshots.data import load_snapshot
from storg.server.snapshots.node import NodeSnapshots
from storg.storage.logstore import DiskLogStore
from storg.testing.memory import MemoryNetwork
from storg.wire import CODEC
from storg.wire.chunks import PutFileCommand
from storg.wire.files import ChunkRef

TICK = 0.01
IDS = ("a", "b", "c")


def put_command(i: int, holders=IDS) -> bytes:
    """A put of a small file with one chunk (distinct per i), as a log entry's data."""
    content = f"file {i}".encode()
    digest = hashlib.sha256(content).hexdigest()
    cmd = PutFileCommand(0, 0, 1_000 + i, f"/dir{i % 3}/f{i:05d}", len(content), digest,
                         (ChunkRef(digest, len(content), tuple(holders)),))
    return CODEC.encode(cmd)


class _PortApi:
    """The slice of NodeService the client port needs: the snapshot handlers."""

    def __init__(self, member: Member) -> None:
        self.member = member

    def client_handlers(self) -> dict:
        return self.member.snapshots.handlers()

    def leader_client_address(self) -> str:
        return ""


class Member:
    """One node: its disk, core, state machine, driver and snapshots."""

    def __init__(self, cluster: SnapCluster, nid: str) -> None:
        self.cluster = cluster
        self.nid = nid
        self.dir = cluster.root / nid
        self.store = DiskLogStore(self.dir, segment_bytes=cluster.segment_bytes)
        state = self.store.load()
        loaded = load_snapshot(self.store)
        self.fsm = FileStoreStateMachine()
        if loaded is not None:
            self.fsm.install(loaded)
        snap = state.snapshot
        if snap.index == 0 and not snap.conf.voters:
            snap = SnapshotMeta(0, 0, ConfState(voters=frozenset(cluster.ids)))
        self.start_snapshot = state.snapshot.index
        self.start_tail = len(state.entries)
        core = RaftCore(nid, RaftConfig(election_ticks=10, heartbeat_ticks=2),
                        random.Random(f"{cluster.seed}-{nid}-{cluster.starts}"),
                        hard_state=state.hard_state, snapshot=snap, entries=state.entries)
        self.node = RaftNode(core, self.store, self.fsm, None, reactor=cluster.clock,
                             executor=run_inline, tick_seconds=TICK, default_timeout=5.0)
        self.node._send = cluster.net.attach(nid, self.node.step)
        self.snapshots = NodeSnapshots(
            self.node, self.fsm, self.store, every=cluster.every, reactor=cluster.clock,
            address_of=lambda peer: peer, send_message=self.node._send, executor=run_inline,
            connect_to=cluster.connect, part_bytes=cluster.part_bytes, retry_delay=0.2)
        self.node.start()

    def stop(self) -> None:
        self.snapshots.stop()
        self.node.stop()
        self.store.close()


class SnapCluster:
    def __init__(self, root: Path, ids=IDS, every: int = 10, seed: int = 1,
                 segment_bytes: int = 1024, part_bytes: int = 4096) -> None:
        self.root = Path(root)
        self.ids = ids
        self.every = every
        self.seed = seed
        self.segment_bytes = segment_bytes
        self.part_bytes = part_bytes
        self.clock = Clock()
        self.net = MemoryNetwork(self.clock)
        self.members: dict[str, Member] = {}
        self.pumps: list[iosim.IOPump] = []
        self.connections = 0
        self.starts = 0
        for nid in ids:
            self.start(nid)

    def start(self, nid: str) -> Member:
        self.starts += 1
        member = Member(self, nid)
        self.net.down.discard(nid)
        self.members[nid] = member
        return member

    def crash(self, nid: str) -> None:
        """Stop a node (what it persisted stays on disk) and cut it off."""
        self.net.down.add(nid)
        self.members.pop(nid).stop()

    async def connect(self, reactor, address: str, timeout: float = 5.0, node: str | None = None) -> RequestConnection:
        """Stands in for storg.net.connection.connect: an in-memory link to ``address``'s port."""
        member = self.members.get(address)
        if member is None or address in self.net.down:
            raise ConnectionRefusedError(address)
        server = ClientPortFactory(_PortApi(member)).buildProtocol(None)
        client = RequestConnection()
        self.pumps.append(iosim.connect(server, iosim.makeFakeServer(server),
                                        client, iosim.makeFakeClient(client), greet=False))
        self.connections += 1
        return client

    def step(self) -> None:
        self.clock.advance(TICK)
        for _ in range(100):
            moved = False
            for pump in self.pumps:
                moved = pump.pump(advanceClock=False) or moved
            if not moved:
                break
        self.pumps = [p for p in self.pumps
                      if not (p.clientIO.disconnected and p.serverIO.disconnected)]

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / TICK)):
            self.step()

    def run_until(self, cond, seconds: float = 20.0) -> None:
        for _ in range(int(seconds / TICK)):
            if cond():
                return
            self.step()
        assert cond(), "condition not reached in simulated time"

    def leader(self) -> Member | None:
        leaders = [m for m in self.members.values() if m.node.role == Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self) -> Member:
        self.run_until(lambda: self.leader() is not None)
        return self.leader()

    def put_files(self, numbers) -> int:
        """Propose puts through the leader and wait until all are applied there; the last index."""
        results: list = []
        for i in numbers:
            leader = self.wait_leader()
            leader.node.propose(put_command(i)).addBoth(results.append)
            self.step()
        self.run_until(lambda: len(results) == len(list(numbers)))
        failures = [r for r in results if not hasattr(r, "version")]
        assert not failures, failures
        return max(r.version for r in results)

    def converged(self, nids=None) -> bool:
        nids = nids or list(self.members)
        applied = {self.members[n].node.applied_index for n in nids}
        return len(applied) == 1 and len({self.members[n].fsm.digest() for n in nids}) == 1
