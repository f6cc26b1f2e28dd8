"""The data directory's identity: which node of which cluster owns it.

Pointing a node at another node's data directory (or at a directory left
from an older cluster) would splice two Raft logs together; this file makes
the node refuse with one clear line instead.  ``instance_id`` is a random
id made when the directory is created, so peers can tell a node that lost
its disk and came back empty from the node they knew.

The file is small JSON (an operator can read it), written atomically.
With encryption at rest it also carries ``encryption``, a check value of
the cluster secret (:meth:`~storg.storage.keys.Keyring.fingerprint`), and
``mac``, an HMAC of the rest keyed from that secret: the identity stays
plaintext but cannot be altered without the key, and a node given the
wrong key file (or none) refuses to start before it reads, let alone
rewrites, anything sealed.  A plaintext data_dir is never silently mixed
with sealed files: turning encryption on (or off) for an existing
data_dir is refused with a line saying what to do.

Threads: blocking I/O, safe from a thread pool; called once at start-up.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storg.storage.errors import CorruptionError, IdentityMismatch, StorageError
from storg.storage.fsutil import (
    TMP_SUFFIX,
    atomic_write,
    disk_errors,
    read_optional,
    remove_temp_files,
    secure_data_dir,
)
from storg.storage.keys import KeyFileError, Keyring

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
    encryption: str | None = None
    """The key check of the cluster secret the data_dir is sealed with; None: plaintext."""

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "format_version": self.format_version,
            "node_id": self.node_id,
            "cluster_id": self.cluster_id,
            "instance_id": self.instance_id,
        }
        if self.encryption is not None:
            fields["encryption"] = self.encryption
        return fields

    def to_json(self, keyring: Keyring | None = None) -> bytes:
        fields = self._fields()
        if keyring is not None:
            fields["mac"] = keyring.mac(_canonical(fields))
        return json.dumps(fields, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _parse(path: Path, data: bytes) -> Identity:
    try:
        obj = json.loads(data.decode("utf-8"))
        ident = Identity(
            node_id=obj["node_id"], cluster_id=obj["cluster_id"],
            instance_id=obj["instance_id"], format_version=obj["format_version"],
            encryption=obj.get("encryption"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptionError(path, None, f"unreadable identity file: {e}") from None
    if not all(isinstance(v, str) for v in (ident.node_id, ident.cluster_id, ident.instance_id)):
        raise CorruptionError(path, None, "identity fields must be strings")
    if ident.encryption is not None and not isinstance(ident.encryption, str):
        raise CorruptionError(path, None, "identity field encryption must be a string")
    return ident


def _check_encryption(path: Path, d: Path, ident: Identity, raw: bytes, keyring: Keyring | None) -> None:
    """Refuse a key that does not fit the data_dir, before anything sealed is read."""
    if ident.encryption is None:
        if keyring is not None:
            raise StorageError(
                f"data_dir {d} holds plaintext data but encryption is configured; storg does not "
                "encrypt a data_dir in place: remove the encryption section, or give this node an "
                "empty data_dir (storgctl member remove, then add it back with join: true) so it "
                "refills sealed from its peers")
        return
    if keyring is None:
        raise KeyFileError(f"data_dir {d} is encrypted but no encryption.key_file is configured")
    if ident.encryption != keyring.fingerprint():
        raise KeyFileError(f"key file {keyring.path} does not hold the cluster key data_dir {d} "
                           "was sealed with")
    obj = json.loads(raw.decode("utf-8"))
    mac = obj.pop("mac", None)
    if mac != keyring.mac(_canonical(obj)):
        raise CorruptionError(path, None, "the identity's MAC does not match (altered)")


def load_or_create(data_dir: str | os.PathLike[str], node_id: str, cluster_id: str,
                   keyring: Keyring | None = None) -> Identity:
    """Return the data_dir's identity, creating it if the directory is empty.

    Raises :class:`IdentityMismatch` if it belongs to another node or
    cluster, and :class:`StorageError` if it holds files but no identity
    (never adopt data of unknown origin), or if ``keyring`` (None: no
    encryption) does not fit how the data_dir was written.
    """
    d = secure_data_dir(data_dir)
    remove_temp_files(d)
    path = d / FILE_NAME
    data = read_optional(path)
    if data is not None:
        ident = _parse(path, data)
        _check_encryption(path, d, ident, data, keyring)
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
    ident = Identity(node_id, cluster_id, uuid.uuid4().hex, FORMAT_VERSION, created=True,
                     encryption=None if keyring is None else keyring.fingerprint())
    atomic_write(path, ident.to_json(keyring))
    return ident
