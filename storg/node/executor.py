"""Executors: the one way storg runs blocking work off the reactor thread.

:class:`Executor` is the interface; :class:`SerialExecutor` and
:class:`PoolExecutor` are its two kinds.  The rest of this docstring is
about the serial one, whose cost is on the commit path.

A one-thread executor for a node's storage calls: in order, off the reactor, cheap to use.

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
both; ``tests/node/test_executor.py`` checks the contract).

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
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


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
            except BaseException:  # the caller's Deferred carries it
                call_from_thread(d.errback, Failure())
            else:
                call_from_thread(d.callback, result)
                result = None
            d = fn = args = None  # keep nothing of the last call alive while idle


Submit = Callable[..., "defer.Deferred[Any]"]
"""What a user of an executor holds: ``submit(fn, *args)`` -> Deferred (tests pass a function that runs inline)."""


class Executor(Protocol):
    """Work off the reactor thread: every blocking call storg makes goes through one of these.

    ``executor(fn, *args)`` runs ``fn(*args)`` on a thread that is not the
    reactor's and returns a Deferred fired on the reactor thread with its
    outcome; ``stop()`` lets submitted calls finish and fires once the
    threads are gone.  :class:`SerialExecutor` runs calls one at a time in
    order (the Raft log's storage); :class:`PoolExecutor` runs up to
    ``threads`` at once in any order (chunk files, hashing, snapshots).
    """

    def __call__(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]: ...

    def stop(self) -> defer.Deferred[None]: ...


class PoolExecutor:
    """Runs blocking calls on up to ``threads`` threads of a Twisted ThreadPool, in any order.

    For work whose calls are independent (each chunk file, each hash), where
    several disks or cores can help.  Order between calls on the same chunk
    is kept above this, by :class:`storg.server.files.chunk_ops.ChunkOps`.
    """

    def __init__(self, reactor: Any, name: str, threads: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._pool.start()
        self._stopping: defer.Deferred[None] | None = None

    @property
    def name(self) -> str:
        return str(self._pool.name)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if self._stopping is not None:
            return defer.fail(ExecutorStopped(f"executor {self.name} is stopped"))
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def stop(self) -> defer.Deferred[None]:
        """Finish the calls already submitted, then end the threads; fires when they have ended.

        ThreadPool.stop joins its threads, so it runs on a thread of its own
        (the reactor's pool), never on the reactor thread.
        """
        if self._stopping is None:
            self._stopping = deferToThread(self._pool.stop)
        done: defer.Deferred[None] = defer.Deferred()

        def stopped(result: object) -> object:
            done.callback(None)
            return result

        self._stopping.addBoth(stopped)
        return done


def reactor_pool(reactor: Any) -> Submit:
    """The reactor's own thread pool as a :data:`Submit`: for a short-lived process (storgctl)
    whose few blocking calls (an fsync at the end of a get, a hash) need no pool of their own."""
    def submit(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
    return submit
