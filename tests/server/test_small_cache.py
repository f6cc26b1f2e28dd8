"""The small-file cache a node serves small gets from."""

from __future__ import annotations

from storg.server.files.cache import SmallChunkCache
from storg.server.files.upload import INLINE_MAX


def test_keeps_recently_used_chunks_within_its_byte_budget():
    cache = SmallChunkCache(max_bytes=300)
    cache.put("a", b"a" * 100)
    cache.put("b", b"b" * 100)
    cache.put("c", b"c" * 100)
    assert cache.get("a") == b"a" * 100  # now the most recently used
    cache.put("d", b"d" * 100)  # over budget: the least recently used (b) goes
    assert cache.get("b") is None
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    assert len(cache) == 3


def test_replacing_and_discarding_keep_the_byte_count_right():
    cache = SmallChunkCache(max_bytes=200)
    cache.put("a", b"x" * 150)
    cache.put("a", b"x" * 150)  # the same chunk again: counted once
    cache.put("b", b"y" * 50)
    assert cache.get("a") is not None and cache.get("b") is not None
    cache.discard(["a", "missing"])
    assert cache.get("a") is None
    cache.put("c", b"z" * 150)
    assert cache.get("b") is not None and cache.get("c") is not None


def test_large_chunks_and_a_zero_budget_are_not_cached():
    cache = SmallChunkCache(max_bytes=1 << 20)
    cache.put("big", b"x" * (INLINE_MAX + 1))
    assert cache.get("big") is None
    off = SmallChunkCache(max_bytes=0)
    off.put("a", b"a")
    assert off.get("a") is None and len(off) == 0
