"""The hard state (term, vote, commit), replaced atomically on every change.

A lost or mixed-up vote lets a node vote twice in one term, so the file is
never edited in place: :func:`~storg.storage.fsutil.atomic_write` writes a
temporary file, fsyncs it, renames it over the old one and fsyncs the
directory.  A crash leaves the old state or the new one.

File layout (big-endian)::

    magic b"SGHS" | version u8 | length u32 | crc32 u32 | encode_hard_state(hs)

With encryption at rest the file stays plaintext (a term, a vote and a
commit index reveal nothing of the files) but is authenticated: version 2
appends an HMAC-SHA-256 of everything before it, keyed from the cluster
secret, so a vote cannot be forged by whoever holds the disk but not the key.

Threads: blocking I/O, safe from a thread pool; the caller serializes calls.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from storg.raft.types import HardState
from storg.storage.errors import CorruptionError
from storg.storage.fsutil import (
    atomic_write,
    ensure_dir,
    read_optional,
    remove_temp_files,
)
from storg.storage.keys import Keyring
from storg.wire.records import CodecError, decode_hard_state, encode_hard_state

MAGIC = b"SGHS"
VERSION = 1
MAC_VERSION = 2
_MAC_BYTES = 32
FILE_NAME = "hardstate"
_HEAD = struct.Struct(">4sBII")


class HardStateStore:
    """Load and save the hard state kept in ``directory/hardstate``."""

    def __init__(self, directory: str | os.PathLike[str], keyring: Keyring | None = None) -> None:
        self._dir = ensure_dir(directory)
        self._keyring = keyring
        self.path = self._dir / FILE_NAME
        # A crash between the temp write and the rename leaves a temp file;
        # the old hard state is intact, the half-made one is discarded.
        remove_temp_files(self._dir)

    def save(self, hs: HardState) -> None:
        """Replace the stored hard state durably (returns once on disk)."""
        payload = encode_hard_state(hs)
        if self._keyring is None:
            atomic_write(self.path, _HEAD.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload)) + payload)
            return
        body = _HEAD.pack(MAGIC, MAC_VERSION, len(payload), zlib.crc32(payload)) + payload
        atomic_write(self.path, body + bytes.fromhex(self._keyring.mac(body)))

    def load(self) -> HardState | None:
        """The stored hard state, or None if none was ever saved.

        None is distinct from ``HardState()`` so the node can tell a new data
        directory from one whose file went missing.
        """
        data = read_optional(self.path)
        if data is None:
            return None
        return decode_file(self.path, data, self._keyring)


def decode_file(path: Path, data: bytes, keyring: Keyring | None = None) -> HardState:
    """Check and decode the bytes of a hard-state file (authenticated when ``keyring`` is given)."""
    if len(data) < _HEAD.size:
        raise CorruptionError(path, 0, f"file is {len(data)} bytes, shorter than its header")
    magic, version, length, crc = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {magic!r}")
    want = VERSION if keyring is None else MAC_VERSION
    if version != want:
        raise CorruptionError(path, 4, f"version {version}, expected {want} "
                              f"({'with' if keyring is not None else 'without'} encryption at rest)")
    if keyring is not None:
        data, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if len(mac) != _MAC_BYTES or mac.hex() != keyring.mac(data):
            raise CorruptionError(path, None, "the hard state's MAC does not match (altered)")
    payload = data[_HEAD.size:]
    if len(payload) != length:
        raise CorruptionError(path, _HEAD.size, f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise CorruptionError(path, _HEAD.size, "checksum mismatch")
    try:
        return decode_hard_state(payload)
    except CodecError as e:
        raise CorruptionError(path, _HEAD.size, f"undecodable hard state: {e}") from None
