"""The namespace's paths in order, so ``ls`` of a folder does not scan everything."""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from collections.abc import Iterator


class SortedPaths:
    """The namespace's paths in order, for ``ls`` of a folder without scanning everything.

    A list of sorted buckets of at most ``2 * load`` paths: an insert moves
    at most a bucket's worth of pointers, where one flat sorted list would
    move half the namespace on every new file.
    """

    def __init__(self, ordered: list[str] | None = None, load: int = 1000) -> None:
        self._load = load
        ordered = ordered or []
        self._buckets = [ordered[i:i + load] for i in range(0, len(ordered), load)]
        self._maxes = [bucket[-1] for bucket in self._buckets]

    def add(self, key: str) -> None:
        """Insert ``key``, which must not be present."""
        if not self._buckets:
            self._buckets.append([key])
            self._maxes.append(key)
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            i -= 1
            self._buckets[i].append(key)
            self._maxes[i] = key
        else:
            insort(self._buckets[i], key)
        bucket = self._buckets[i]
        if len(bucket) > 2 * self._load:
            self._buckets.insert(i + 1, bucket[self._load:])
            del bucket[self._load:]
            self._maxes.insert(i, bucket[-1])

    def remove(self, key: str) -> None:
        """Remove ``key``, which must be present."""
        i = bisect_left(self._maxes, key)
        bucket = self._buckets[i]
        j = bisect_left(bucket, key)
        del bucket[j]
        if not bucket:
            del self._buckets[i]
            del self._maxes[i]
        elif j == len(bucket):
            self._maxes[i] = bucket[-1]

    def from_key(self, start: str) -> Iterator[str]:
        """The keys >= ``start``, in order; do not change the index while iterating."""
        i = bisect_left(self._maxes, start)
        if i == len(self._maxes):
            return
        bucket = self._buckets[i]
        yield from itertools.islice(bucket, bisect_left(bucket, start), None)
        for bucket in itertools.islice(self._buckets, i + 1, None):
            yield from bucket

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._buckets)

    def snapshot(self) -> tuple[str, ...]:
        """All keys in order, as one immutable copy."""
        return tuple(self)
