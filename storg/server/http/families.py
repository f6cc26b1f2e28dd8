"""The state figures of ``/metrics``: metric families read from the node, on the reactor thread.

Each function reads live objects (the Raft core, the state machine, the
transport's counters, the upkeep counters) and returns fresh
prometheus_client families; :meth:`NodeMetrics.publish
<storg.server.http.metrics.NodeMetrics.publish>` calls them on the reactor
thread and keeps the result as the snapshot a scrape serves.  Nothing here
may walk the namespace: every figure is O(1) or O(members).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from storg.fsm.machine import FileStoreStateMachine
from storg.node.executor import Submit
from storg.node.raft_node import RaftNode
from storg.raft.types import Role
from storg.server.files.garbage import GarbageCollector
from storg.server.files.reserve import DiskReserve
from storg.server.peer import PeerTransport
from storg.server.snapshots.node import NodeSnapshots
from storg.server.upkeep.fill import ChunkFiller
from storg.server.upkeep.repair import Repairer
from storg.server.upkeep.scrub import Scrubber
from storg.storage.chunks import ChunkStore
from storg.storage.logstore import DiskLogStore


@dataclass
class Sources:
    """The live objects the snapshot reads, all owned by the reactor thread."""

    node_id: str
    node: RaftNode
    fsm: FileStoreStateMachine
    transport: PeerTransport
    log_store: DiskLogStore
    chunk_store: ChunkStore
    reserve: DiskReserve
    repairer: Repairer
    scrubber: Scrubber
    garbage: GarbageCollector
    filler: ChunkFiller
    snapshots: NodeSnapshots
    run_in_thread: Submit


def consensus(src: Sources) -> Iterator[Metric]:
    """Raft: leader, term, indexes, proposals, followers' lag (leader), snapshots."""
    node, core = src.node, src.node.core
    yield _gauge("storg_node_info", "This node's id (the value is 1).", 1, node=src.node_id)
    yield _gauge("storg_raft_has_leader", "1 if this node knows a leader, else 0.", int(bool(core.leader)))
    yield _gauge("storg_raft_is_leader", "1 if this node is the leader, else 0.",
                 int(core.role == Role.LEADER))
    yield _gauge("storg_raft_term", "The current Raft term.", core.term)
    yield _gauge("storg_raft_commit_index", "The highest log index known committed.", core.commit_index)
    yield _gauge("storg_raft_applied_index", "The highest log index applied here.", node.applied_index)
    yield _gauge("storg_raft_last_index", "The last index in this node's log.", core.last_index)
    yield _counter("storg_raft_proposals_committed", "Entries committed (the commit index, as etcd).",
                   core.commit_index)
    yield _counter("storg_raft_proposals_applied", "Entries applied (the applied index, as etcd).",
                   node.applied_index)
    yield _gauge("storg_raft_proposals_pending", "Proposals waiting to be applied.", node.proposals_pending)
    yield _counter("storg_raft_proposals_failed", "Proposals dropped, timed out or failed at stop.",
                   node.proposals_failed)
    conf = core.conf
    yield _gauge("storg_raft_voters", "Voting members in the configuration.", len(conf.voters))
    lag = GaugeMetricFamily("storg_raft_follower_match_lag_entries",
                            "On the leader: entries each follower's log is behind the leader's.",
                            labels=["peer"])
    if core.role == Role.LEADER:
        last = core.last_index
        for peer, progress in sorted(core.progress().items()):
            if peer != src.node_id:
                lag.add_metric([peer], max(0, last - progress.match))
    yield lag
    sent = src.snapshots.sender.sent
    yield _counter("storg_raft_snapshots_sent", "Snapshots this node streamed to followers.", len(sent))
    yield _counter("storg_raft_snapshot_sent_bytes", "Bytes of snapshots streamed to followers.",
                   sum(item[2] for item in sent))
    receiver = src.snapshots.receiver
    yield _counter("storg_raft_snapshots_received", "Snapshots received from leaders and staged here.",
                   len(receiver.stored))
    yield _counter("storg_raft_snapshot_received_bytes", "Bytes of snapshots received from leaders.",
                   receiver.stored_bytes)


def disk(src: Sources, walk: tuple[int, int, int] | None, free: int | None) -> Iterator[Metric]:
    """The log's bytes, free space and the reserve, the chunk store (``walk``: its last walk)."""
    yield _gauge("storg_disk_wal_bytes", "Bytes of records in the Raft log's segments.", src.log_store.log_bytes)
    reserve = src.reserve
    free_family = GaugeMetricFamily("storg_disk_free_bytes",
                                    "Free bytes on the data_dir's file system (the reserve's last measurement, "
                                    "else the last chunk-store walk's).")
    if free is not None:
        free_family.add_metric([], free)
    yield free_family
    yield _gauge("storg_disk_reserve_bytes", "files.disk_reserve_mb: free space new file bytes may not use.",
                 reserve.reserve_bytes)
    yield _gauge("storg_disk_full", "1 while free space is below the reserve (puts are refused).",
                 int(bool(reserve.full)))
    yield _gauge("storg_disk_wal_full", "1 while the Raft log cannot be written (disk full).",
                 int(bool(src.node.log_full)))
    chunks = GaugeMetricFamily("storg_chunk_store_chunks", "Chunk files in this node's store (last walk).")
    size = GaugeMetricFamily("storg_chunk_store_bytes", "Bytes of chunk files in this node's store (last walk).")
    if walk is not None:
        chunks.add_metric([], walk[0])
        size.add_metric([], walk[1])
    yield chunks
    yield size


def files(src: Sources) -> Iterator[Metric]:
    """The namespace and the chunk map (O(1) counts), repair, scrub, fill and garbage counters."""
    stats = src.fsm.stats()
    yield _gauge("storg_namespace_files", "Files in the namespace.", stats["files"])
    yield _gauge("storg_namespace_bytes", "Bytes of the files' contents.", stats["bytes"])
    yield _gauge("storg_chunk_map_chunks", "Chunks in the chunk map.", stats["chunks"])
    held = src.fsm.usage().get(src.node_id, 0)
    yield _gauge("storg_chunk_map_held_bytes", "Bytes the chunk map places on this node.", held)
    repairer, scrub = src.repairer, src.scrubber
    leader_counts = src.node.is_leader() and repairer.rounds
    under = repairer.under_replicated if leader_counts else scrub.under_replicated
    yield _gauge("storg_chunks_under_replicated",
                 "Chunks with fewer copies than wanted (the leader's last repair round, else the last scrub).",
                 under)
    lost = GaugeMetricFamily("storg_chunks_lost", "On the leader: chunks in use with no reachable holder "
                             "(last repair round).")
    queue = GaugeMetricFamily("storg_repair_queue_chunks",
                              "On the leader: chunks the last repair round set out to copy or re-home.")
    if leader_counts:
        lost.add_metric([], repairer.lost)
        queue.add_metric([], repairer.queued)
    yield lost
    yield queue
    counts, gc, fill = scrub.counters, src.garbage.stats, src.filler.counters
    yield _counter("storg_repair_copies", "Chunk copies made by repair (leader).", repairer.counters["copies"])
    yield _counter("storg_repair_bytes", "Bytes copied by repair (leader).", repairer.counters["bytes"])
    yield _counter("storg_scrub_passes", "Scrub passes finished.", counts["passes"])
    yield _counter("storg_scrub_checked_bytes", "Bytes of chunk copies verified by scrub.", counts["bytes_checked"])
    yield _counter("storg_scrub_bad_copies", "Corrupt chunk copies scrub found.", counts["bad_copies"])
    yield _counter("storg_scrub_missing_copies", "Missing chunk copies scrub found.", counts["missing_copies"])
    yield _counter("storg_scrub_repairs", "Copies scrub restored here.", counts["repairs_done"])
    yield _counter("storg_fill_fetched_chunks", "Chunks fetched to fill this node's share.", fill["fetched"])
    yield _counter("storg_gc_chunks_collected", "Unreferenced chunks collected.", gc["chunks_collected"])
    yield _counter("storg_gc_orphans_removed", "Orphan chunk files removed from this node.", gc["orphans_removed"])


def peers(src: Sources) -> Iterator[Metric]:
    """Per peer: connected, bytes, drops, heartbeat round trip; refused connections by reason."""
    stats = src.transport.stats
    connected = src.transport.connected_peers()
    peers = sorted(src.transport.peers())
    up = GaugeMetricFamily("storg_peer_connected", "1 if the connection to the peer is up.", labels=["peer"])
    for peer in peers:
        up.add_metric([peer], int(peer in connected))
    yield up
    yield _per_peer(CounterMetricFamily, "storg_peer_sent_bytes", "Raft message bytes sent.", stats.bytes_sent)
    yield _per_peer(CounterMetricFamily, "storg_peer_received_bytes", "Raft message bytes received.",
                    stats.bytes_received)
    yield _per_peer(CounterMetricFamily, "storg_peer_dropped_messages",
                    "Raft messages dropped (peer not connected or its send buffer full).", stats.dropped)
    yield _per_peer(GaugeMetricFamily, "storg_peer_round_trip_time_seconds",
                    "Last heartbeat round trip to the peer (measured on the leader).", stats.rtt_seconds)
    refused = CounterMetricFamily("storg_peer_refused_connections",
                                  "Peer connections refused, by reason.", labels=["reason"])
    for reason, n in sorted(stats.refused.items()):
        refused.add_metric([reason], n)
    yield refused


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _per_peer(cls: Callable[..., Any], name: str, doc: str, values: dict[str, Any]) -> Metric:
    family = cls(name, doc, labels=["peer"])
    for peer, value in sorted(values.items()):
        family.add_metric([peer], value)
    return family
