"""The data directory's identity: which node of which cluster owns it.

Pointing a node at another node's data directory (or at a directory left
from an older cluster) would splice two Raft logs together; this file makes
the node refuse with one clear line instead.  ``instance_id`` is a random
id made when the directory is created, so peers can tell a node that lost
its disk and came back empty from the node they knew.

The file is small JSON (an operator can read it), written atomically.

Threads: blocking I/O, safe from a thread pool; called once at start-up.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from storg.storage.errors import CorruptionError, IdentityMismatch, StorageError
from storg.storage.fsutil import (
    TMP_SUFFIX,
    atomic_write,
    disk_errors,
    ensure_dir,
    read_optional,
    remove_temp_files,
)

FILE_NAME = "identity"
FORMAT_VERSION = 1

_IGNORED = {"lost+found"}  # present at the root of a fresh file system
_IGNORED_SUFFIXES = (TMP_SUFFIX, ".pid", ".log")  # crash leftovers; twistd's pid and log files


@dataclass(frozen=True)
class Identity:
    node_id: str
    cluster_id: str
    instance_id: str
    format_version: int = FORMAT_VERSION
    created: bool = False
    """True when this call made the identity, i.e. the data_dir was empty."""

    def to_json(self) -> bytes:
        return json.dumps({
            "format_version": self.format_version,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "instance_id": self.instance_id,
        }, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _parse(path: Path, data: bytes) -> Identity:
    try:
        obj = json.loads(data.decode("utf-8"))
        ident = Identity(
            node_id=obj["node_id"], cluster_id=obj["cluster_id"],
            instance_id=obj["instance_id"], format_version=obj["format_version"],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError(path, None, f"unreadable identity file: {e}") from None
    if not all(isinstance(v, str) for v in (ident.node_id, ident.cluster_id, ident.instance_id)):
        raise CorruptionError(path, None, "identity fields must be strings")
    return ident


def load_or_create(data_dir: str | os.PathLike[str], node_id: str, cluster_id: str) -> Identity:
    """Return the data_dir's identity, creating it if the directory is empty.

    Raises :class:`IdentityMismatch` if it belongs to another node or
    cluster, and :class:`StorageError` if it holds files but no identity
    (never adopt data of unknown origin).
    """
    d = ensure_dir(data_dir)
    remove_temp_files(d)
    path = d / FILE_NAME
    data = read_optional(path)
    if data is not None:
        ident = _parse(path, data)
        if ident.format_version != FORMAT_VERSION:
            raise StorageError(f"data_dir {d} has format version {ident.format_version}; "
                               f"this storg reads version {FORMAT_VERSION}")
        if ident.cluster_id != cluster_id:
            raise IdentityMismatch(f"data_dir {d} belongs to cluster {ident.cluster_id!r}, "
                                   f"not {cluster_id!r}")
        if ident.node_id != node_id:
            raise IdentityMismatch(f"data_dir {d} belongs to node {ident.node_id!r}, not {node_id!r}")
        return ident
    with disk_errors(f"cannot list {d}"):
        others = sorted(n for n in os.listdir(d) if n not in _IGNORED and not n.endswith(_IGNORED_SUFFIXES))
    if others:
        raise StorageError(f"data_dir {d} is not empty ({', '.join(others[:3])}) "
                           f"but has no {FILE_NAME} file; refusing to adopt it")
    ident = Identity(node_id, cluster_id, uuid.uuid4().hex, FORMAT_VERSION, created=True)
    atomic_write(path, ident.to_json())
    return ident
