"""A one-thread executor for a node's storage calls: in order, off the reactor, cheap to use.

A Raft node hands its storage thread one call per Ready (write the new
entries and the hard state, fsync), and waits for it before it answers
anyone.  At low load that is one hand-off per commit on every node, so
what the hand-off itself costs is paid on the commit path.  Twisted's
``deferToThreadPool`` costs about 100 us of CPU per round trip on this
machine (its Team and LockWorker, a ``queue.Queue`` built on a Condition,
the log context captured and restored around each call).  This executor
keeps the same contract with less: a ``queue.SimpleQueue`` (implemented in
C) to the thread, and one ``reactor.callFromThread`` per outcome back,
about half the CPU per round trip (``benchmarks/hotpath_bench.py`` prints
both; ``tests/test_executor.py`` checks the contract).

The contract, the same as a one-thread ThreadPool's:

* calls run one at a time, in the order they were submitted, on one
  thread that is not the reactor's;
* each call's outcome (its result, or the Failure of what it raised) fires
  the Deferred returned for it, on the reactor thread;
* :meth:`stop` lets the calls already submitted finish, and fires once the
  thread is done; a call submitted after it fails at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


class ExecutorStopped(RuntimeError):
    """A call was submitted to an executor that is stopping or stopped."""


_STOP = object()


class SerialExecutor:
    """Runs blocking calls one at a time, in order, on a thread of its own."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._done = False
        self._stop_waiters: list[defer.Deferred] = []
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    def __call__(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` on the executor's thread after every call submitted before it."""
        if self._stopping:
            return defer.fail(ExecutorStopped(f"executor {self.name} is stopped"))
        d: defer.Deferred = defer.Deferred()
        self._jobs.put((d, fn, args))
        return d

    def stop(self) -> defer.Deferred:
        """Finish the calls already submitted, then end the thread; fires when it has ended."""
        d: defer.Deferred = defer.Deferred()
        if self._done:
            d.callback(None)
            return d
        self._stop_waiters.append(d)
        if not self._stopping:
            self._stopping = True
            self._jobs.put(_STOP)
        return d

    def _finished(self) -> None:
        """On the reactor thread, once the worker has taken its last job."""
        self._thread.join()  # it only has to return
        self._done = True
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    def _work(self) -> None:
        call_from_thread = self._reactor.callFromThread
        while True:
            job = self._jobs.get()
            if job is _STOP:
                call_from_thread(self._finished)
                return
            d, fn, args = job
            job = None
            try:
                result = fn(*args)
            except BaseException:  # noqa: BLE001 -- the caller's Deferred carries it
                call_from_thread(d.errback, Failure())
            else:
                call_from_thread(d.callback, result)
                result = None
            d = fn = args = None  # keep nothing of the last call alive while idle
