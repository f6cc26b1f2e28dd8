"""What the cluster benchmarks share: percentiles, and running passes on fresh clusters.

Each benchmark measures ``--repeats`` passes, each on a freshly created
cluster in a temporary folder, and prints medians, because this machine is
shared and its speed drifts.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_passes(one_pass: Callable[[Any, Path], Awaitable[dict]], summarize: Callable[[list[dict]], None],
               repeats: int, prefix: str, folder: str = ".") -> None:
    """Run ``one_pass(reactor, workdir)`` ``repeats`` times under the reactor, then summarize."""

    async def run(reactor: Any) -> None:
        passes = []
        for i in range(repeats):
            with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as tmp:
                passes.append(await one_pass(reactor, Path(tmp)))
            print(f"pass {i + 1}/{repeats} done", file=sys.stderr)
        summarize(passes)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
