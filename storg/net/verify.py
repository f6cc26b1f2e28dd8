"""The hash a reader checks a whole file against: its SHA-256, or a composite's, part by part.

Both client drivers use it, through the client protocol's GetCheck.

A file built by compose (an S3 multipart upload) has as its ``sha256`` the
SHA-256 of its parts' raw SHA-256 digests concatenated, and
``attrs.parts`` gives the parts' sizes.  :func:`content_hasher` returns a
hasher that, fed the file's bytes in order, ends with the hex digest to
compare with ``FileInfo.sha256`` either way, so every get verifies the
whole object end to end without knowing how it was written.
"""

from __future__ import annotations

import hashlib
from typing import Any

from storg.wire.files import FileInfo


class PartsHasher:
    """SHA-256 of each part in turn (sizes known in advance), then of their digests."""

    def __init__(self, parts: tuple[int, ...]) -> None:
        self._parts = parts
        self._i = 0
        self._left = parts[0] if parts else 0
        self._part = hashlib.sha256()
        self._digests: list[bytes] = []
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self._i < len(self._parts) and self._left == 0:
            self._digests.append(self._part.digest())
            self._part = hashlib.sha256()
            self._i += 1
            self._left = self._parts[self._i] if self._i < len(self._parts) else 0

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            if self._i >= len(self._parts):
                self._part.update(view)  # more bytes than the parts: the digest will not match
                self._digests.append(b"overflow")
                return
            take = min(self._left, len(view))
            self._part.update(view[:take])
            view = view[take:]
            self._left -= take
            self._skip_empty()

    def hexdigest(self) -> str:
        if self._i < len(self._parts):  # fewer bytes than the parts: no match
            return "incomplete:" + hashlib.sha256(b"".join(self._digests)).hexdigest()
        return hashlib.sha256(b"".join(self._digests)).hexdigest()


def content_hasher(info: FileInfo) -> Any:
    """A hasher (``update``, ``hexdigest``) whose digest of the whole content equals ``info.sha256``."""
    if info.attrs.parts:
        return PartsHasher(info.attrs.parts)
    return hashlib.sha256()


def is_composite(info: FileInfo) -> bool:
    return bool(info.attrs.parts)
