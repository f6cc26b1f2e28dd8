"""The bytes all uploads on a node may have in flight at once, beside each upload's own window.

Each upload stops reading its client's connection while more than its
window (8 chunks) of its chunks are not yet stored and hashed.  That
bounds one upload; it does not bound many.  The S3 gateway opens one
upload per part on a single connection (boto3 sends 8 parts at once), so
the leader held 8 windows of chunks, and with each chunk also queued as
TLS records to two followers, a 10 GiB multipart upload took the leader
to 244 MiB of RSS (benchmarks/s3_big_bench.py).  The budget is the
node-wide bound: an upload whose chunk takes the total past it pauses its
connection like a full window does, and every upload so paused resumes
once the total is back within it.

It cannot deadlock: the bytes counted are chunks already read, whose
writes and hashing go on without reading any connection, so the total
always drains.
"""

from __future__ import annotations

from typing import Protocol


class Waiter(Protocol):
    def budget_freed(self) -> None:
        """The total is back within the budget: resume reading, unless the own window is still full."""


class UploadBudget:
    """The node's count of upload bytes in flight, and the uploads paused until it drops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiting: dict[int, Waiter] = {}  # by id: insertion order, no hashing of uploads

    def over(self) -> bool:
        return self.in_flight > self.limit

    def take(self, size: int) -> None:
        self.in_flight += size

    def give_back(self, size: int) -> None:
        self.in_flight -= size
        if self._waiting and not self.over():
            waiting, self._waiting = self._waiting, {}
            for waiter in waiting.values():
                waiter.budget_freed()

    def wait(self, waiter: Waiter) -> None:
        """Call ``waiter.budget_freed()`` once the total is within the budget again."""
        self._waiting[id(waiter)] = waiter

    def forget(self, waiter: Waiter) -> None:
        self._waiting.pop(id(waiter), None)
