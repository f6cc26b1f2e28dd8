"""The disk reserve: refuse new file bytes before the disk is full, as etcd raises NOSPACE.

A node whose disk fills up cannot write its Raft log, and a node that
cannot write its log can acknowledge nothing, vote for no one and apply no
delete (the very thing that would free space).  So each node keeps
``files.disk_reserve_mb`` of its ``data_dir``'s file system free: below
it, the requests that add file bytes are refused with ``DISK_FULL``
(storgctl exit 3, "disk full: ..."), and everything else goes on: gets,
ls, stat, rm, garbage collection, the Raft log, membership changes.  The
space the reserve keeps is what those need (a WAL segment, a snapshot, the
uploads already accepted; see ``FileTuning.disk_reserve_mb``).

What is refused below the reserve, on the node whose disk it is:

* a put, at ``PutStart``, on the leader (its log takes the file's entry,
  and its disk usually a copy of every chunk);
* a chunk copy: a ``ChunkPutAfter`` from the leader (an upload's chunk or
  a repair copy) and the leader's own copy of a chunk it places on itself.
  A put whose chunks cannot reach a majority of their holders because
  holders are full fails with ``DISK_FULL`` too, not ``UNAVAILABLE``: a
  client would otherwise retry until its timeout and report "cluster
  unavailable", hiding the reason.

Not refused: small files written at apply (their bytes are already in the
log, and the entry committed), and the copies scrub and fill restore
(copies the chunk map already counts as held here: they bring the node
back to the share it had, rather than add to it).

How free space is known.  ``os.statvfs`` is cheap but is still a system
call into a file system that may hang (NFS), so it is not made per
request on the reactor: it runs every ``interval`` seconds (1 s) in a
thread, and between two measurements every byte this node accepts is
charged against the last one, so a burst of uploads cannot overshoot the
reserve by more than what is in flight.  Free space is ``f_bavail``
blocks (what an unprivileged writer may use, below the root-only blocks
of ext4): conservative, and the same figure ``df`` shows as available.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from storg.node.executor import Submit
from storg.server.client_port import RequestError
from storg.storage.errors import DiskFullError
from storg.wire import ErrorCode

log = Logger(namespace="storg.files.reserve")

MIB = 1 << 20

CHECK_INTERVAL = 1.0
"""Seconds between two measurements of the free space."""


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskReserve:
    """Whether this node's data_dir has room for new file bytes; see the module docstring.

    ``reserve_bytes`` 0 disables it: :meth:`check` never refuses and
    nothing is measured.
    """

    def __init__(self, node_id: str, path: str | os.PathLike[str], reserve_bytes: int, *,
                 reactor: Any, run_in_thread: Submit, interval: float = CHECK_INTERVAL,
                 measure: Callable[[str], int] = free_bytes) -> None:
        self.node_id = node_id
        self.path = os.fspath(path)
        self.reserve_bytes = reserve_bytes
        self.reactor = reactor
        self.run_in_thread = run_in_thread
        self.interval = interval
        self.measure = measure
        self.measured: int | None = None
        """Free bytes at the last measurement (None: not measured, or it failed)."""
        self.charged = 0
        """Bytes accepted since the last measurement, not yet seen by it."""
        self.full = False
        self._loop: LoopingCall | None = None
        self._measuring = False
        self._measure_failed = False

    @property
    def enabled(self) -> bool:
        return self.reserve_bytes > 0

    def start(self) -> None:
        """Measure once now (start-up: nothing to block yet), then every ``interval`` in a thread."""
        if not self.enabled:
            return
        try:
            self._measured(self.measure(self.path))
        except OSError as exc:
            self._unmeasurable(exc)
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def refresh(self) -> defer.Deferred:
        """Measure the free space again (in a thread); fires when the answer is in."""
        if not self.enabled or self._measuring:
            return defer.succeed(None)
        self._measuring = True
        d = self.run_in_thread(self.measure, self.path)

        def done(result: Any) -> None:
            self._measuring = False
            if isinstance(result, int):
                self._measured(result)

        def failed(failure: Any) -> None:
            self._measuring = False
            self._unmeasurable(failure.value)

        d.addCallbacks(done, failed)
        return d

    def free(self) -> int | None:
        """Free bytes as best known now: the last measurement less what was accepted since."""
        if self.measured is None:
            return None
        return self.measured - self.charged

    def below(self) -> bool:
        """True while free space is under the reserve (False when disabled or unknown)."""
        free = self.free()
        return self.enabled and free is not None and free < self.reserve_bytes

    def check(self, what: str) -> None:
        """Raise RequestError(DISK_FULL) if ``what`` (a new file's bytes) must be refused."""
        if self.below():
            raise self.refusal(what)

    def charge(self, nbytes: int) -> None:
        """``nbytes`` of file data were accepted here: count them until the next measurement."""
        if self.enabled:
            self.charged += nbytes
            self._note_state()

    def refusal(self, what: str) -> RequestError:
        free = self.free() or 0
        return RequestError(
            ErrorCode.DISK_FULL,
            f"{what} refused: {self.node_id} has {max(free, 0) / MIB:.1f} MiB free in {self.path}, "
            f"below its disk reserve of {self.reserve_bytes / MIB:.0f} MiB (files.disk_reserve_mb); "
            f"remove files to free space")

    # -- internals -------------------------------------------------------------------

    def _measured(self, free: int) -> None:
        self.measured = free
        self.charged = 0
        if self._measure_failed:
            self._measure_failed = False
            log.info("{node}: free space in {path} can be measured again", node=self.node_id,
                     path=self.path)
        self._note_state()

    def _unmeasurable(self, exc: BaseException) -> None:
        # Unknown is not full: refusing every put because statvfs failed
        # once would be an outage of our own making.  Logged once.
        self.measured = None
        self.charged = 0
        if not self._measure_failed:
            self._measure_failed = True
            log.warn("{node}: cannot measure the free space in {path}: {why}; the disk reserve "
                     "is not enforced until it can", node=self.node_id, path=self.path, why=exc)
        self._note_state()

    def _note_state(self) -> None:
        """Log each crossing of the reserve once, not each refusal (a full disk refuses many)."""
        full = self.below()
        if full == self.full:
            return
        self.full = full
        free = (self.free() or 0) / MIB
        if full:
            log.warn("{node}: {free:.1f} MiB free in {path}, below the disk reserve of "
                     "{reserve:.0f} MiB: refusing puts and chunk copies until space is freed; "
                     "reads, deletes and the Raft log go on", node=self.node_id, free=free,
                     path=self.path, reserve=self.reserve_bytes / MIB)
        else:
            log.info("{node}: {free:.1f} MiB free in {path}, above the disk reserve again: "
                     "accepting puts", node=self.node_id, free=free, path=self.path)


def is_disk_full(failure_or_exc: Any) -> bool:
    """Whether a chunk store failed for want of space: a DISK_FULL refusal here or from a
    holder, or the disk itself saying ENOSPC (``DiskFullError``)."""
    exc = getattr(failure_or_exc, "value", failure_or_exc)
    return isinstance(exc, DiskFullError) or getattr(exc, "code", None) == ErrorCode.DISK_FULL


__all__ = ["CHECK_INTERVAL", "DiskReserve", "free_bytes", "is_disk_full"]
