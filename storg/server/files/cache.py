"""A node's memory of small chunks, so a small get costs no open, read or re-hash."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from storg.server.files.upload import INLINE_MAX

SMALL_CACHE_BYTES = 16 << 20
"""Memory for the small files a node keeps to serve gets without reading the disk."""


class SmallChunkCache:
    """Small chunks (at most INLINE_MAX bytes) recently applied or read here, least recently used out.

    Only bytes known to hash to their key go in (an inline entry's data,
    hashed at apply; a chunk read and verified), so serving from here keeps
    the rule that no byte is sent unverified; a copy damaged on disk later
    is scrub's business.  A small get then costs no open, read and re-hash.
    """

    def __init__(self, max_bytes: int = SMALL_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, chunk_hash: str) -> bytes | None:
        data = self._data.get(chunk_hash)
        if data is not None:
            self._data.move_to_end(chunk_hash)
        return data

    def put(self, chunk_hash: str, data: bytes) -> None:
        """Keep ``data``, which the caller has checked hashes to ``chunk_hash``."""
        if len(data) > INLINE_MAX or self.max_bytes <= 0:
            return
        old = self._data.pop(chunk_hash, None)
        if old is not None:
            self._bytes -= len(old)
        self._data[chunk_hash] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, dropped = self._data.popitem(last=False)
            self._bytes -= len(dropped)

    def discard(self, hashes: Any) -> None:
        for chunk_hash in hashes:
            old = self._data.pop(chunk_hash, None)
            if old is not None:
                self._bytes -= len(old)
