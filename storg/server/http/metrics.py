"""``/metrics``: one Prometheus registry per node, fed on the reactor thread.

Two kinds of figures, kept apart on purpose:

* Events (a batch fsynced, a request answered, a leader change) are
  counted as they happen, into prometheus_client's own histograms and
  counters.  Those are thread-safe (each value has its lock), which is why
  the WAL's fsync histogram may be fed from the storage thread where the
  fsync is timed: it hands in a number and touches nothing of the node.
* States (term, indexes, namespace counts, peers' bytes) are read from the
  live objects by :meth:`NodeMetrics.publish`, on the reactor thread, into
  an immutable list of metric families: the *published snapshot*.  The
  registry's collector for them only returns that list.

A scrape (:meth:`NodeMetrics.scrape`) publishes on the reactor, then
renders the text format in a pool thread: rendering is the only costly
part (it formats every sample), and it reads nothing but the snapshot and
the locked metrics, so it can neither block nor race the reactor.  The
snapshot costs O(members) to build: no figure walks the namespace (the
state machine keeps its counts), and the chunk store's size on disk is
measured by a walk in a thread every ``CHUNK_WALK_INTERVAL`` seconds.

Names follow Prometheus conventions (base units, ``_total`` for counters)
and etcd's where they mean the same (``has_leader``, ``is_leader``,
``leader_changes_seen_total``, ``proposals_*``, ``wal_fsync_duration_seconds``).
README.rst, section "Metrics and the status page", lists them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from storg.raft.types import Role, SoftState
from storg.server.http import families as families_of
from storg.server.http.families import Sources
from storg.wire import files as wire_files
from storg.wire import messages as wire_messages
from storg.wire import objects as wire_objects

log = Logger(namespace="storg.http.metrics")

# No ``*_created`` series: they double the text of every counter and histogram and
# Prometheus ignores them.  A process-wide switch, set by the only user of the library.
disable_created_metrics()

CHUNK_WALK_INTERVAL = 30.0
"""Seconds between two walks of the chunk store (in a thread) for its bytes and chunk count."""

FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                 1.024, 2.048, 4.096, 8.192)
"""etcd's buckets for ``wal_fsync_duration_seconds`` (0.5 ms doubling to 8 s)."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

NOT_TIMED = frozenset({wire_files.PutData})
"""A put's data frames: one per chunk piece, answered by nothing; the put is timed at PutEnd."""


def operation_name(kind: type) -> str:
    """The ``operation`` label of a request type: ``PutEnd`` is ``put``, ``LsRequest`` is ``ls``."""
    special = {wire_files.PutEnd: "put", wire_objects.PutEndObject: "put", wire_files.PutStart: "put_start",
               wire_messages.StatusRequest: "status"}
    name = special.get(kind)
    if name is not None:
        return name
    base = kind.__name__.removesuffix("Request")
    return "".join("_" + c.lower() if c.isupper() else c for c in base).lstrip("_")


class _Published(Collector):
    """Returns the families the reactor published last; never reads the node itself."""

    def __init__(self) -> None:
        self.families: tuple[Metric, ...] = ()

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _walk_chunks(root: str) -> tuple[int, int, int]:
    """Thread: (chunks, bytes, free bytes) of the chunk store, skipping its tmp folder."""
    count = size = 0
    for folder, dirs, names in os.walk(root):
        if folder == root and "tmp" in dirs:
            dirs.remove("tmp")
        for name in names:
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # collected meanwhile
            count += 1
    st = os.statvfs(root)
    return count, size, st.f_bavail * st.f_frsize


class NodeMetrics:
    """One node's registry: event metrics, the published snapshot, and the scrape."""

    def __init__(self, sources: Sources, reactor: Any) -> None:
        self.sources = sources
        self.reactor = reactor
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.wal_fsync = Histogram(
            "storg_disk_wal_fsync_duration_seconds",
            "Time to write and fsync one batch of Raft log entries (group commit).",
            buckets=FSYNC_BUCKETS, registry=r)
        self.wal_batch = Histogram(
            "storg_disk_wal_append_batch_entries", "Raft log entries written per fsynced batch.",
            buckets=BATCH_BUCKETS, registry=r)
        self.snapshot_save = Histogram(
            "storg_disk_snapshot_save_duration_seconds",
            "Time to write and commit one automatic snapshot of the state machine.",
            buckets=SNAPSHOT_BUCKETS, registry=r)
        self.requests = Histogram(
            "storg_client_request_duration_seconds",
            "Client-port requests by operation and outcome (ok or the error code), and their latency.",
            ["operation", "outcome"], buckets=REQUEST_BUCKETS, registry=r)
        self.leader_changes = Counter(
            "storg_raft_leader_changes_seen_total", "Times this node saw the leader change.", registry=r)
        self.elections = Counter(
            "storg_raft_elections_started_total", "Elections this node started as a candidate.", registry=r)
        self.pre_votes = Counter(
            "storg_raft_pre_votes_started_total", "Pre-vote rounds this node started.", registry=r)
        self.published = _Published()
        r.register(self.published)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds...: read from
        # /proc/self by the render thread, which touches no object of the node.
        ProcessCollector(registry=r)
        self._chunk_walk: tuple[int, int, int] | None = None
        self._walking = False
        self._walk_loop: LoopingCall | None = None
        self._snapshots_seen = 0
        self._last_soft: SoftState | None = None
        self.last_publish_seconds = 0.0

    # -- wiring ----------------------------------------------------------------

    def start(self) -> None:
        """Hook the event sources and start the chunk-store walks."""
        src = self.sources
        src.log_store.on_append = self._on_append
        src.node.on_role_change(self.on_soft_state)
        self._walk_loop = LoopingCall(self._walk)
        self._walk_loop.clock = self.reactor
        self._walk_loop.start(CHUNK_WALK_INTERVAL, now=True).addErrback(
            lambda f: log.failure("chunk store walk loop failed", f))

    def stop(self) -> None:
        if self._walk_loop is not None and self._walk_loop.running:
            self._walk_loop.stop()
        self._walk_loop = None
        if self.sources.log_store.on_append == self._on_append:
            self.sources.log_store.on_append = None

    def _on_append(self, entries: int, seconds: float) -> None:
        """Storage thread: two numbers into two locked histograms, nothing else."""
        self.wal_fsync.observe(seconds)
        self.wal_batch.observe(entries)

    def on_request(self, kind: type, outcome: str, seconds: float) -> None:
        """The client port's request observer (reactor thread)."""
        if kind in NOT_TIMED:
            return
        self.requests.labels(operation_name(kind), outcome).observe(seconds)

    def on_soft_state(self, soft: SoftState) -> None:
        """The node's role watcher: count leader changes, elections and pre-votes."""
        old, self._last_soft = self._last_soft, soft
        if old is not None and soft.leader != old.leader and soft.leader:
            self.leader_changes.inc()
        elif old is None and soft.leader:
            self.leader_changes.inc()
        if soft.role == Role.CANDIDATE and (old is None or old.role != Role.CANDIDATE or old.term != soft.term):
            self.elections.inc()
        if soft.role == Role.PRE_CANDIDATE and (old is None or old.role != Role.PRE_CANDIDATE):
            self.pre_votes.inc()

    def _walk(self) -> defer.Deferred | None:
        if self._walking:
            return None
        self._walking = True

        def done(result: tuple[int, int, int]) -> None:
            self._chunk_walk = result

        def failed(failure: Any) -> None:
            log.warn("walking the chunk store for /metrics failed: {why}", why=failure.getErrorMessage())

        def finished(_: object) -> None:
            self._walking = False

        d = self.sources.run_in_thread(_walk_chunks, str(self.sources.chunk_store.root))
        d.addCallbacks(done, failed).addBoth(finished)
        return None  # the loop does not wait for a walk: a slow disk skips beats instead

    def free_bytes(self) -> int | None:
        """This node's free space: the reserve's last measurement, else the last walk's."""
        reserve = self.sources.reserve
        free = reserve.measured if reserve.enabled else None
        if free is None and self._chunk_walk is not None:
            free = self._chunk_walk[2]
        return free

    # -- the scrape --------------------------------------------------------------

    def scrape(self) -> defer.Deferred:
        """Publish on the reactor, then render the text format in a thread; fires with bytes."""
        self.publish()
        return self.sources.run_in_thread(generate_latest, self.registry)

    def publish(self) -> None:
        """Reactor thread: read every state figure once, into a new immutable snapshot."""
        started = time.perf_counter()
        self._observe_new_snapshots()
        src = self.sources
        families = (*families_of.consensus(src), *families_of.disk(src, self._chunk_walk, self.free_bytes()),
                    *families_of.files(src), *families_of.peers(src))
        self.published.families = families
        self.last_publish_seconds = time.perf_counter() - started

    def _observe_new_snapshots(self) -> None:
        taken = self.sources.snapshots.auto.taken
        for _index, _size, seconds in taken[self._snapshots_seen:]:
            self.snapshot_save.observe(seconds)
        self._snapshots_seen = len(taken)
