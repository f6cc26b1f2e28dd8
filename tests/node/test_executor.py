"""SerialExecutor: the node's storage thread.  In order, off the reactor, outcomes on the reactor."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from storg.node.executor import ExecutorStopped, SerialExecutor


@pytest.fixture
def executor():
    ex = SerialExecutor(reactor, name="test-storage")
    yield ex
    if not ex._done:
        pytest_twisted.blockon(ex.stop())


@pytest_twisted.ensureDeferred
async def test_calls_run_in_submission_order_on_one_thread_that_is_not_the_reactors(executor):
    reactor_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    gate = threading.Event()

    def job(k: int) -> int:
        if k == 0:
            gate.wait(5)  # later calls queue up behind a slow first one
        seen.append((k, threading.get_ident()))
        return k * k

    pending = [executor(job, k) for k in range(50)]
    gate.set()
    results = await defer.gatherResults(pending)
    assert results == [k * k for k in range(50)]
    assert [k for k, _ in seen] == list(range(50))
    threads = {t for _, t in seen}
    assert len(threads) == 1 and reactor_thread not in threads


@pytest_twisted.ensureDeferred
async def test_outcomes_fire_on_the_reactor_thread(executor):
    fired_on: list[int] = []
    d = executor(lambda: 7)
    d.addCallback(lambda v: (fired_on.append(threading.get_ident()), v)[1])
    assert await d == 7
    assert fired_on == [threading.get_ident()]


@pytest_twisted.ensureDeferred
async def test_an_exception_fails_that_call_only(executor):
    def boom() -> None:
        raise OSError(28, "No space left on device")

    failed = executor(boom)
    after = executor(lambda: "still running")
    with pytest.raises(OSError, match="No space left"):
        await failed
    assert await after == "still running"


@pytest_twisted.ensureDeferred
async def test_stop_finishes_what_was_submitted_then_refuses_more(executor):
    gate = threading.Event()
    done: list[int] = []

    def slow(k: int) -> None:
        gate.wait(5)
        done.append(k)

    pending = [executor(slow, k) for k in range(3)]
    stopped = executor.stop()
    assert not stopped.called
    gate.set()
    await stopped
    assert done == [0, 1, 2]
    assert all(d.called for d in pending)
    assert not executor._thread.is_alive()
    with pytest.raises(ExecutorStopped):
        await executor(lambda: None)
    await executor.stop()  # stopping twice is harmless
