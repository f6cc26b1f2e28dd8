"""The namespace's paths in order, so ``ls`` of a folder does not scan everything."""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left, insort
from collections.abc import Iterator

_BULK = 64
"""Runs of keys at least this long are added or removed in one pass over their buckets."""


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

    def add_sorted(self, keys: list[str]) -> None:
        """Insert ``keys`` (sorted, none present): one merge over the buckets they span.

        A folder moved or copied is a run of keys in order; adding them one
        by one costs a bisect and a list insert each, a merge costs one pass.
        """
        if not self._buckets:
            load = self._load
            self._buckets = [keys[k:k + load] for k in range(0, len(keys), load)]
            self._maxes = [bucket[-1] for bucket in self._buckets]
            return
        if len(keys) < _BULK:
            for key in keys:
                self.add(key)
            return
        last = len(self._buckets) - 1
        i = min(bisect_left(self._maxes, keys[0]), last)
        j = min(bisect_left(self._maxes, keys[-1]), last)
        region = list(heapq.merge(itertools.chain.from_iterable(self._buckets[i:j + 1]), keys))
        load = self._load
        new = [region[k:k + load] for k in range(0, len(region), load)]
        self._buckets[i:j + 1] = new
        self._maxes[i:j + 1] = [bucket[-1] for bucket in new]

    def remove_sorted(self, keys: list[str]) -> None:
        """Remove ``keys`` (sorted, all present) in one pass over the buckets they span."""
        if len(keys) < _BULK:
            for key in keys:
                self.remove(key)
            return
        doomed = set(keys)
        i = bisect_left(self._maxes, keys[0])
        j = bisect_left(self._maxes, keys[-1])
        kept = [rest for rest in ([k for k in bucket if k not in doomed] for bucket in self._buckets[i:j + 1])
                if rest]
        self._buckets[i:j + 1] = kept
        self._maxes[i:j + 1] = [bucket[-1] for bucket in kept]

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
