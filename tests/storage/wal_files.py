"""Helpers for tests that look inside write-ahead log segment files."""

from __future__ import annotations

from pathlib import Path

from storg.storage.wal import MAGIC


def logical_size(path: Path) -> int:
    """End of the last record in a segment file: where its zero fill (if any) starts."""
    data = path.read_bytes()
    pos = 0
    while pos + 8 <= len(data) and data[pos:pos + 4] == MAGIC:
        pos += int.from_bytes(data[pos + 4:pos + 8], "big")
    return pos
