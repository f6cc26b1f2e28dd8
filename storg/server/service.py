"""Assembles one storg node: storage, Raft core, node driver, listeners.

The service is a ``MultiService`` so that twistd starts and stops it as one
piece: storage is opened and the core rebuilt from it in ``startService``,
and ``stopService`` hands leadership over before anything is closed, so a
SIGTERM (a rolling restart) costs the cluster no election timeout.

Listeners are built from endpoints: TLS (``storg.net.tls.server_endpoint`` with the
node's credentials) when the config has a ``tls`` section, plain TCP
otherwise; the protocols are the same either way.  Every outgoing
connection goes through the node's :class:`~storg.net.connection.Dialer`
(client ports) or the peer transport (peer ports), both given the same
credentials, so no connection of a TLS node is ever plain.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger

from storg.config import Address, NodeConfig, cluster_id
from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.members import MemberDirectory
from storg.net.connection import PLAIN, Dialer, RequestConnection
from storg.net.credentials import TLSCredentials
from storg.net.local_pipe import PipeAddress, connect_pipe
from storg.net.tls import server_endpoint as tls_server_endpoint
from storg.node.executor import PoolExecutor, reactor_pool
from storg.node.raft_node import RaftNode, Timeout
from storg.raft.core import RaftConfig, RaftCore
from storg.raft.types import ConfState, Role, SnapshotMeta
from storg.server.client_port import ClientPortFactory
from storg.server.files.chunk_io import Chunks, LocalChunks, RemoteChunks
from storg.server.files.inline_restore import restore_inline_chunks
from storg.server.files.placement import Liveness
from storg.server.files.reserve import DiskReserve
from storg.server.files.service import FileService
from storg.server.http.metrics import NodeMetrics, Sources
from storg.server.http.site import build_site
from storg.server.http.view import ClusterView
from storg.server.peer import PeerTransport
from storg.server.peer_instances import KnownInstances
from storg.server.snapshots.data import load_snapshot
from storg.server.snapshots.node import NodeSnapshots
from storg.server.upkeep.fill import ChunkFiller
from storg.server.upkeep.repair import Repairer
from storg.server.upkeep.scrub import Scrubber
from storg.server.upkeep.status import UpkeepStatus
from storg.storage.chunks import ChunkStore
from storg.storage.identity import load_or_create
from storg.storage.keys import Keyring, load_key_file
from storg.storage.logstore import DiskLogStore
from storg.wire import (
    CODEC,
    Hello,
    MemberAddress,
    MemberRow,
    ProbeCommand,
    ProbeRead,
    ProbeReply,
    ProbeWrite,
    StatusReply,
    StatusRequest,
)

log = Logger(namespace="storg.service")

TICK_MS = 10

CHUNK_THREADS = 4
"""Chunk file jobs at once: each is a write, an fsync, a rename and a folder fsync, or a read and a hash."""

HASH_THREADS = 2
"""Whole-file hashes of uploads and verification of chunks from peers (hashlib releases the GIL)."""
"""One core tick.  Small enough that heartbeat and election timeouts in
milliseconds map onto ticks without rounding them by much."""


def raft_config(config: NodeConfig) -> RaftConfig:
    """Config milliseconds -> core ticks."""
    low, high = config.raft.election_timeout_ms
    return RaftConfig(
        election_ticks=max(2, low // TICK_MS),
        heartbeat_ticks=max(1, config.raft.heartbeat_ms // TICK_MS),
        max_entry_bytes=config.limits.max_proposal_bytes,
    )


def server_endpoint(reactor: Any, address: Address, credentials: TLSCredentials | None = None):
    """The endpoint a listener binds: TLS with ``credentials`` (every client must present a
    certificate from our CA), else plain TCP."""
    if credentials is not None:
        return tls_server_endpoint(reactor, address.host, address.port, credentials.server())
    cls = TCP6ServerEndpoint if ":" in address.host else TCP4ServerEndpoint
    return cls(reactor, address.port, interface=address.host)


def load_credentials(config: NodeConfig) -> TLSCredentials | None:
    """The node's TLS material from its ``tls`` section (None without one); TLSConfigError names the file."""
    if config.tls is None:
        return None
    return TLSCredentials(config.tls.ca, config.tls.cert, config.tls.key, node_id=config.node_id)


class NodeService(service.MultiService):
    """One node, as twistd runs it."""

    def __init__(self, config: NodeConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        self.cluster_id = cluster_id(config)
        self.node: RaftNode | None = None
        self.transport: PeerTransport | None = None
        self.client_port: ClientPortFactory | None = None
        self.log_store: DiskLogStore | None = None
        self.keyring: Keyring | None = None
        """The cluster key file, loaded at open_storage when the config has ``encryption``."""
        self.directory = MemberDirectory.from_config(config)
        self.files: FileService | None = None
        self.snapshots: NodeSnapshots | None = None
        self.filler: ChunkFiller | None = None
        self.metrics: NodeMetrics | None = None
        self.cluster_view: ClusterView | None = None
        self._started = False
        self._stopping = False
        self.credentials: TLSCredentials | None = None
        self.dialer = PLAIN
        self.twistd_options: Any = None
        """twistd's options (set by storg.daemon), from which the text log observer is built."""

    def setServiceParent(self, parent: Any) -> None:
        """Join twistd's application and give it the node's log observer (storg/logs.py).

        twistd builds the application, attaches this service, and only then
        starts logging, using the application's ILogObserver component when
        it has one: the JSON observer with ``log: {format: json}``, else
        twistd's own text observer behind the repeat summarizer.
        """
        super().setServiceParent(parent)
        if not hasattr(parent, "setComponent"):
            return
        from twisted.logger import ILogObserver

        from storg.logs import Summarizer, json_observer, text_observer
        observer: Summarizer | None
        if self.config.log.format == "json":
            path = self.config.log.path
            observer = json_observer(self.config.node_id, str(path) if path else None)
        else:
            observer = text_observer(self.config.node_id, self.twistd_options)
        if observer is not None:
            self.log_observer = observer
            parent.setComponent(ILogObserver, observer)

    def load_credentials(self) -> None:
        """Read and check the TLS files; raises TLSConfigError (one line naming the file).

        Separate from startService, as open_storage is, so twistd reports a
        bad certificate before it daemonizes.
        """
        if self.credentials is None and self.config.tls is not None:
            self.credentials = load_credentials(self.config)
            self.dialer = Dialer(self.credentials)

    # -- start -------------------------------------------------------------

    def open_storage(self) -> None:
        """Check the data_dir's identity and read the log; raises StorageError.

        Separate from startService so that twistd can report a bad data_dir
        before it daemonizes.
        """
        if self.log_store is not None:
            return
        cfg = self.config
        started = time.monotonic()
        # The key first: a wrong or missing key refuses the start before anything is read or written.
        self.keyring = None if cfg.key_file is None else load_key_file(cfg.key_file)
        identity = load_or_create(cfg.data_dir, cfg.node_id, self.cluster_id, self.keyring)
        self.instance_id = identity.instance_id
        self.known_instances = KnownInstances.load(cfg.data_dir, self.directory.members,
                                                    run_in_thread=reactor_pool(self.reactor),
                                                    is_member=self._is_member)
        self.directory.on_remove(self.known_instances.forget)
        self.log_store = DiskLogStore(cfg.data_dir, keyring=self.keyring)
        self._state = self.log_store.load()
        # Before the reactor runs, so reading the snapshot here blocks nothing.
        self._loaded_snapshot = load_snapshot(self.log_store)
        self.chunk_store = ChunkStore(cfg.data_dir / "chunks", keyring=self.keyring)
        self._load_seconds = time.monotonic() - started

    def _restore_inline(self, snapshot_index: int) -> None:
        """Small files the snapshot covers but this node's store lost: written from the log again."""
        assert self.log_store is not None and self.fsm is not None and self.chunk_store is not None
        restored = restore_inline_chunks(self.log_store.entries_covered(snapshot_index), self.fsm,
                                         self.chunk_store, self.config.node_id)
        if restored:
            log.warn("{node}: wrote {n} small files again from the log (their write had not reached "
                     "the disk before the snapshot)", node=self.config.node_id, n=restored)

    def _reseal_log(self) -> defer.Deferred:
        """The log and snapshot part of the re-encryption pass, on the storage thread."""
        assert self.node is not None and self.log_store is not None
        return self.node.run_storage(self.log_store.reseal)

    def startService(self) -> None:
        self.load_credentials()
        self.open_storage()
        assert self.log_store is not None  # open_storage made it (or raised)
        cfg = self.config
        started = time.monotonic() - self._load_seconds
        state = self._state
        if state.snapshot.index == 0 and not state.snapshot.conf.voters:
            state.snapshot = self._bootstrap_snapshot()
        core = RaftCore(
            cfg.node_id, raft_config(cfg), random.Random(os.urandom(16)),
            hard_state=state.hard_state, snapshot=state.snapshot, entries=state.entries,
        )
        self.fsm = FileStoreStateMachine(self.directory)
        if self._loaded_snapshot is not None:
            # Before the transport: the snapshot's member addresses are peers too.
            self.fsm.install(self._loaded_snapshot)
            self._loaded_snapshot = None
            self._restore_inline(state.snapshot.index)
        self.transport = PeerTransport(
            cfg.node_id, self.cluster_id, self.instance_id,
            {nid: m.peer for nid, m in self.directory.peers(cfg.node_id).items()},
            bind_host=cfg.peer_listen.host,
            on_message=self._on_peer_message,
            reactor=self.reactor,
            accept_peer=self._accept_peer,
            tls=self.credentials,
            max_connections=cfg.limits.max_peer_connections,
        )
        self.node = RaftNode(
            core, self.log_store, self.fsm, self.transport.send,
            reactor=self.reactor, tick_seconds=TICK_MS / 1000.0, on_fatal=self._storage_failed,
        )
        self.snapshots = NodeSnapshots(
            self.node, self.fsm, self.log_store, every=cfg.raft.snapshot_every, reactor=self.reactor,
            address_of=self._client_address, send_message=self.transport.send, connect_to=self.dialer,
            resume_grace=cfg.limits.snapshot_resume_grace_s)
        self._build_data_path()
        assert self.files is not None and self.filler is not None  # _build_data_path made them
        filler = self.filler
        self.snapshots.installed.append(lambda _index: filler.trigger())
        self.directory.on_change(self._members_changed)
        listeners: list[tuple[Address, Any]] = []
        on_request = None
        if cfg.http_listen is not None:
            site = self._build_http()
            assert self.metrics is not None  # _build_http made it
            on_request = self.metrics.on_request
            listeners.append((cfg.http_listen, site))
        client_port = ClientPortFactory(self, cfg.limits, self.reactor, tls=self.credentials is not None,
                                        is_member=self._is_member, on_request=on_request)
        self.client_port = client_port
        for address, factory in (
            (cfg.peer_listen, self.transport.server_factory),
            (cfg.client_listen, client_port),
            *listeners,
        ):
            endpoint = server_endpoint(self.reactor, address, self.credentials)
            listener = internet.StreamServerEndpointService(endpoint, factory)
            # Fail twistd's start with the error (port in use) instead of logging and running deaf.
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
        super().startService()
        self.reactor.callWhenRunning(self._install_sigterm_handler)
        observer = getattr(self, "log_observer", None)
        if observer is not None:
            from twisted.internet.task import LoopingCall
            self._log_flush = LoopingCall(observer.flush)
            self._log_flush.clock = self.reactor
            self._log_flush.start(observer.window / 4, now=False)
        self.node.start()
        self.files.start()
        self.repairer.start()
        self.scrubber.start()
        self.reactor.callWhenRunning(self.filler.trigger)
        if self.metrics is not None and self.cluster_view is not None:
            self.metrics.start()
            self.cluster_view.start()
        self._started = True
        if core.conf.voters == frozenset({cfg.node_id}) and core.role != Role.LEADER:
            core.campaign()  # a cluster of one serves at once
        log.info("{node} started in {ms:.0f} ms: cluster {cluster}, term {term}, snapshot at index "
                 "{snapshot} + {tail} log entries, last index {last}, members {members}",
                 node=cfg.node_id, ms=(time.monotonic() - started) * 1000,
                 cluster=self.cluster_id, term=core.term, snapshot=core.snapshot_meta.index,
                 tail=len(state.entries), last=core.last_index,
                 members=",".join(sorted(core.conf.members())) or "(none yet: waiting to join)")
        self._log_transport_security()

    def _log_transport_security(self) -> None:
        """Say at every start whether the ports are protected: an operator must never have to guess."""
        cfg = self.config
        listening = ", ".join(f"{key} {address}" for key, address in cfg.listen_addresses().items())
        if self.credentials is not None:
            log.info("{node}: mutual TLS on {listening} (CA {ca}; this node is {who})", node=cfg.node_id,
                     listening=listening, ca=self.credentials.ca, who=self.credentials.identity)
        elif cfg.tls_off:
            log.warn("{node}: WARNING: TLS is off (tls: off): {listening} accept anyone who can reach them, "
                     "unauthenticated and unencrypted", node=cfg.node_id, listening=listening)
        else:
            log.warn("{node}: WARNING: no tls section: serving plain TCP on loopback only ({listening}); "
                     "anyone on this machine can use every port. Add tls: {{ca, cert, key}} "
                     "(storgctl certs init) to require certificates", node=cfg.node_id, listening=listening)

    def _build_data_path(self) -> None:
        """The file service and its upkeep, each given the parts it uses and nothing more.

        Chunk files get a pool of their own, apart from the Raft log's
        storage thread, so a burst of chunk traffic never delays a Raft
        fsync; hashing gets another, because the chunk pool's threads may
        all be waiting on fsyncs.
        """
        assert self.node is not None and self.snapshots is not None  # startService made them
        cfg = self.config
        tuning = cfg.files
        self.chunk_pool = PoolExecutor(self.reactor, f"storg-chunks-{cfg.node_id}", CHUNK_THREADS)
        self.hash_pool = PoolExecutor(self.reactor, f"storg-hash-{cfg.node_id}", HASH_THREADS)
        self.local_chunks = LocalChunks(self.chunk_store, self.chunk_pool)
        self.remote_chunks = RemoteChunks(self.reactor, self._client_address, self.hash_pool,
                                          connect_to=self.dialer)
        chunks = Chunks(cfg.node_id, self.local_chunks, self.remote_chunks)
        liveness = Liveness(self.reactor)
        self.disk_reserve = DiskReserve(
            cfg.node_id, cfg.data_dir, tuning.disk_reserve_mb * (1 << 20),
            reactor=self.reactor, run_in_thread=reactor_pool(self.reactor))
        self.files = files = FileService(
            self.node, self.fsm, chunks,
            replication_factor=tuning.replication_factor, chunk_size=tuning.chunk_size,
            tuning=tuning, reactor=self.reactor, hasher=self.hash_pool, liveness=liveness,
            address_of=self._client_address, reserve=self.disk_reserve, limits=cfg.limits,
        )
        self.snapshots.auto.before_compact.append(files.sync_inline_chunks)
        files.on_holder_failure = self._storage_failed
        self.repairer = Repairer(
            self.node, self.fsm, self.reactor, chunks=chunks, replicator=files.replicator,
            guard=files.guard, applied=files.applied, liveness=liveness,
            grace=tuning.repair_grace_s, rate=tuning.repair_rate_mb_s * (1 << 20),
            interval=tuning.repair_interval_s)
        self.scrubber = Scrubber(
            self.node, self.fsm, self.reactor, chunks=chunks, ops=files.ops,
            replication_factor=tuning.replication_factor,
            rate=tuning.scrub_rate_mb_s * (1 << 20), interval=tuning.scrub_interval_s,
            reseal_log=None if self.keyring is None else self._reseal_log)
        # Copies the state says are here but are not (a snapshot from the leader, a crash).
        self.filler = ChunkFiller(
            self.node, self.fsm, self.reactor, chunks=chunks, ops=files.ops,
            limiter=self.scrubber.limiter, scrub_counters=self.scrubber.counters)
        self.upkeep_status = UpkeepStatus(self.node, self.scrubber, self.repairer, files.garbage)

    def _build_http(self) -> Any:
        """The metrics, the cluster view and the Site of ``http_listen`` (docs/architecture.rst,
        section "Observability"); started with the node, after it."""
        assert self.node is not None and self.transport is not None and self.log_store is not None
        assert self.files is not None and self.snapshots is not None and self.filler is not None
        sources = Sources(
            node_id=self.config.node_id, node=self.node, fsm=self.fsm, transport=self.transport,
            log_store=self.log_store, chunk_store=self.chunk_store, reserve=self.disk_reserve,
            repairer=self.repairer, scrubber=self.scrubber, garbage=self.files.garbage,
            filler=self.filler, snapshots=self.snapshots, run_in_thread=reactor_pool(self.reactor))
        self.metrics = metrics = NodeMetrics(sources, self.reactor)
        self.cluster_view = view = ClusterView(sources, self.directory, self.dialer, self.reactor,
                                               free_bytes=metrics.free_bytes, address_of=self._client_address)
        return build_site(metrics, view, self.node, started=lambda: self._started and not self._stopping)

    def _install_sigterm_handler(self) -> None:
        """SIGTERM is the normal way to stop a node: make it exit with status 0.

        twistd's own handler records the signal and re-raises it at exit,
        so the process would die "by SIGTERM" (status -15) even after a
        clean stop.  This replaces it, once the reactor has installed its
        own, with a plain reactor.stop(), which runs stopService (hand
        leadership over, close the log) as before.
        """
        import signal

        def on_sigterm(signum, frame) -> None:
            log.info("{node} received SIGTERM: stopping", node=self.config.node_id)
            self.reactor.callFromThread(self.reactor.stop)

        if hasattr(self.reactor, "callFromThread"):
            signal.signal(signal.SIGTERM, on_sigterm)

    def _bootstrap_snapshot(self) -> SnapshotMeta:
        """The membership at index 0: the config's cluster, or nobody when joining."""
        if self.config.join:
            return SnapshotMeta()
        return SnapshotMeta(0, 0, ConfState(voters=frozenset(self.config.cluster)))

    # -- stop --------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        """Hand leadership over, then close listeners, peers and storage."""
        self._stopping = True
        flush = getattr(self, "_log_flush", None)
        if flush is not None and flush.running:
            flush.stop()
        node = self.node
        if node is not None and node.is_leader() and len(node.core.conf.voters) > 1:
            try:
                new_leader = yield node.transfer_leadership(timeout=2.0)
                log.info("{node} handed leadership to {to} before stopping",
                         node=self.config.node_id, to=new_leader)
            except (Timeout, Exception) as exc:
                log.warn("{node}: leadership transfer before stop failed: {why}",
                         node=self.config.node_id, why=exc)
        yield defer.maybeDeferred(super().stopService)
        if self.metrics is not None and self.cluster_view is not None:
            self.metrics.stop()
            self.cluster_view.stop()
        if self.files is not None:
            self.files.stop()
            self.repairer.stop()
            self.scrubber.stop()
            assert self.filler is not None  # made with files
            self.filler.stop()
            self.remote_chunks.close()
        if self.transport is not None:
            yield self.transport.stop()
        if self.snapshots is not None:
            yield self.snapshots.stop()
        if node is not None:
            yield node.stop()
        if self.files is not None:
            yield self.chunk_pool.stop()
            yield self.hash_pool.stop()
        if self.log_store is not None:
            self.log_store.close()

    def _storage_failed(self, failure) -> None:
        log.critical("{node}: storage failure, stopping: {why}", node=self.config.node_id,
                     why=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()

    # -- the gateway's way in ------------------------------------------------

    def open_local_client(self) -> RequestConnection:
        """A client connection to this node's own client port through memory, for the S3 gateway
        inside this process (:mod:`storg.net.local_pipe`): no socket, no TLS, the same port's
        checks, limits and handlers; its other end is this node, so it has this node's identity."""
        assert self.client_port is not None, "the client port is made in startService"
        client = RequestConnection()
        server = self.client_port.buildProtocol(PipeAddress(f"{self.config.node_id}'s gateway"))
        trust = getattr(server, "trust", None)  # not on a refusal (too many connections)
        if trust is not None:
            trust(self.credentials.identity if self.credentials is not None else None)
        connect_pipe(self.reactor, client, server, f"{self.config.node_id}'s gateway")
        return client

    # -- peers -------------------------------------------------------------

    def _on_peer_message(self, msg) -> None:
        if self.node is not None:
            self.node.step(msg)

    def _is_member(self, node_id: str) -> bool:
        """A member for the peer port: in the directory (config, applied changes) or in the
        core's latest configuration (an addition appended here but not applied yet)."""
        if node_id in self.directory.members():
            return True
        return self.node is not None and node_id in self.node.core.conf.members()

    def _accept_peer(self, hello: Hello) -> str | None:
        """Refuse a peer that forgot its votes (came back with an empty data_dir)."""
        return self.known_instances.check(hello.node_id, hello.instance_id)

    def _members_changed(self) -> None:
        if self.transport is not None:
            self.transport.set_peers(
                {nid: m.peer for nid, m in self.directory.peers(self.config.node_id).items()})


    # -- client API ----------------------------------------------------------

    def client_handlers(self) -> dict:
        handlers = {
            StatusRequest: self.status_reply,
            ProbeWrite: self.probe_write,
            ProbeRead: self.probe_read,
        }
        assert self.files is not None and self.snapshots is not None  # clients are served once started
        handlers.update(self.files.handlers())
        handlers.update(self.upkeep_status.handlers())
        handlers.update(self.snapshots.handlers())
        if getattr(self, "admin", None) is None:
            from storg.server.admin import MembershipAdmin
            self.admin = MembershipAdmin.for_service(self)
        handlers.update(self.admin.handlers())
        return handlers

    def _client_address(self, node_id: str) -> str:
        member = self.directory.members().get(node_id)
        return str(member.client) if member is not None else ""

    def status_reply(self, request: StatusRequest, conn=None) -> StatusReply:
        assert self.node is not None  # clients are served once started
        s = self.node.status()
        row = MemberRow(s["id"], s["role"], s["term"], s["leader"], s["commit_index"],
                        s["applied_index"], s["last_index"])
        members = tuple(
            MemberAddress(nid, str(m.peer), str(m.client))
            for nid, m in sorted(self.directory.members().items())
            if nid in self.node.core.conf.members() or not self.node.core.conf.members()
        )
        return StatusReply(request.request_id, row, members)

    def probe_write(self, request: ProbeWrite, conn=None) -> defer.Deferred:
        assert self.node is not None  # clients are served once started
        d = self.node.propose(CODEC.encode(ProbeCommand(request.payload)))
        return d.addCallback(lambda index: ProbeReply(request.request_id, index))

    def probe_read(self, request: ProbeRead, conn=None) -> defer.Deferred:
        assert self.node is not None  # clients are served once started
        d = self.node.read_index()
        return d.addCallback(lambda index: ProbeReply(request.request_id, index))

    def leader_client_address(self) -> str:
        return self._client_address(self.node.leader if self.node is not None else "")


def make_service(config: NodeConfig, reactor: Any = None) -> NodeService:
    return NodeService(config, reactor)
