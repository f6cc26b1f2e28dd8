"""The cluster key file and the sealing of records with it (encryption at rest).

The key file is small JSON, mode 0600, shared by every node of a cluster::

    {"format": "storg-keys-1",
     "cluster_secret": "<base64 of 32 random bytes>",
     "active": 2,
     "keys": [{"id": 1, "key": "<base64 of 32 bytes>", "created": "...Z"},
              {"id": 2, "key": "...", "created": "...Z"}]}

Why two kinds of secret.  The *data keys* seal records (AES-256-GCM); each
sealed record names the key id it was sealed with, so rotation adds a key,
makes it active for new writes, and old records stay readable until the
re-encryption pass has rewritten them, after which the old key can go.
The *cluster secret* is never rotated: chunk file names are an HMAC keyed
from it (:meth:`Keyring.chunk_name`), and a name must not change when the
data key does, or every chunk would have to move and dedup would break
across a rotation.  It also yields the data_dir's key check
(:meth:`Keyring.fingerprint`), which tells "wrong key file" from "damage".

Nonces.  AES-GCM breaks if a (key, nonce) pair ever repeats, and nodes
write records without coordinating, so a counter would have to be
persisted and shared.  Instead every record draws a fresh 128-bit salt and
is sealed under its own subkey, ``HMAC-SHA-256(data key, label | salt)``,
with fixed nonces (0, 1, ... for the parts of one record).  A nonce then
repeats only if two records draw the same salt: after 2^48 records (a
million writes a second for nine years) the chance is 2^-33.  Random
96-bit nonces under the data key itself would allow only about 2^32
records per key before the collision chance reaches 2^-32, which a busy
log reaches in days.  The subkey costs one HMAC and one AES key schedule
per record (about 2 us).

The key id and salt are plaintext (a reader must know which key to use),
so they carry a 4-byte tag, an HMAC keyed from the cluster secret: a
flipped bit in a key id is then corruption (repaired from another holder)
and not taken for a record of a key the file lacks, which a node must
never rewrite.

Threads: a Keyring is immutable once loaded; seal/open are safe from any
thread (``cryptography`` releases the GIL while it encrypts big buffers).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storg.storage.errors import CorruptionError, StorageError

FORMAT = "storg-keys-1"
KEY_BYTES = 32
SALT_BYTES = 16
TAG_BYTES = 16
_HEAD = struct.Struct(">I16s4s")  # key id, salt, header tag
SEAL_OVERHEAD = _HEAD.size + TAG_BYTES
"""Bytes a sealed record adds to its plaintext (one part)."""

_SUBKEY_LABEL = b"storg seal v1\x00"
_NAME_LABEL = b"storg chunk names v1"
_CHECK_LABEL = b"storg key check v1"
_MAC_LABEL = b"storg file mac v1"
_HEAD_LABEL = b"storg record header v1"


class KeyFileError(StorageError):
    """The key file is missing, unreadable, malformed or exposed; the message names the file."""


class UnknownKeyError(KeyFileError):
    """A record is sealed with a key id the key file does not hold.

    Never treated as corruption: the data may be intact, the key is what is
    missing, so nothing is rewritten or deleted because of it.
    """


def _nonce(part: int) -> bytes:
    return part.to_bytes(12, "big")


@dataclass(frozen=True)
class Keyring:
    """The loaded key file: the cluster secret, the data keys by id, the active id."""

    path: Path
    cluster_secret: bytes
    keys: Mapping[int, bytes]
    active: int

    # -- derived secrets ----------------------------------------------------

    def _derived(self, label: bytes) -> bytes:
        return hmac.digest(self.cluster_secret, label, "sha256")

    def chunk_name(self, chunk_hash: str) -> str:
        """The file name of the chunk whose plaintext SHA-256 is ``chunk_hash`` (hex).

        HMAC-SHA-256, keyed from the cluster secret, of the plaintext's
        SHA-256: a keyed hash of the plaintext (the SHA-256 is a function of
        it) that costs 32 bytes of hashing instead of a second walk over a
        megabyte.  Equal chunks get equal names inside one cluster (dedup),
        and names say nothing about content to anyone without the secret.
        """
        return hmac.digest(self._name_key, bytes.fromhex(chunk_hash), "sha256").hex()

    @functools.cached_property
    def _name_key(self) -> bytes:
        return self._derived(_NAME_LABEL)

    def fingerprint(self) -> str:
        """A check value of the cluster secret, kept in the data_dir's identity (reveals nothing)."""
        return self._derived(_CHECK_LABEL).hex()[:32]

    def mac(self, data: bytes) -> str:
        """An HMAC of ``data`` keyed from the cluster secret, for files kept plaintext (identity)."""
        return hmac.digest(self._derived(_MAC_LABEL), data, "sha256").hex()

    # -- sealing ------------------------------------------------------------

    @functools.cached_property
    def _head_key(self) -> bytes:
        return self._derived(_HEAD_LABEL)

    def _head_tag(self, key_id: int, salt: bytes) -> bytes:
        return hmac.digest(self._head_key, key_id.to_bytes(4, "big") + salt, "sha256")[:4]

    def _aead(self, key_id: int, salt: bytes) -> AESGCM:
        key = self.keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"key id {key_id} not in key file {self.path}")
        return AESGCM(hmac.digest(key, _SUBKEY_LABEL + salt, "sha256"))

    def new_context(self) -> tuple[bytes, AESGCM]:
        """A fresh record header (active key id, random salt) and its AEAD, for multi-part records."""
        salt = os.urandom(SALT_BYTES)
        head = _HEAD.pack(self.active, salt, self._head_tag(self.active, salt))
        return head, self._aead(self.active, salt)

    def context_of(self, head: bytes, where: str | os.PathLike[str] = "sealed record") -> AESGCM:
        """The AEAD of a record whose header (from :meth:`new_context`) is ``head``.

        CorruptionError if the header's tag fails (damage), UnknownKeyError
        if it holds but names a key id the file lacks.
        """
        key_id, salt, tag = _HEAD.unpack(head)
        if not hmac.compare_digest(tag, self._head_tag(key_id, salt)):
            raise CorruptionError(where, None, "sealed record header fails authentication")
        return self._aead(key_id, salt)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """``key id | salt | tag | AES-256-GCM(plaintext)``, authenticated with ``aad``."""
        head, aead = self.new_context()
        return head + aead.encrypt(_nonce(0), plaintext, aad)

    def open(self, blob: bytes | memoryview, aad: bytes, where: str | os.PathLike[str]) -> bytes:
        """The plaintext of :meth:`seal`'s ``blob``; CorruptionError if it was altered.

        Raises :class:`UnknownKeyError` (not corruption) for a key id the
        key file lacks.
        """
        if len(blob) < SEAL_OVERHEAD:
            raise CorruptionError(where, None, "sealed record is shorter than its header")
        aead = self.context_of(bytes(blob[:_HEAD.size]), where)
        try:
            return aead.decrypt(_nonce(0), blob[_HEAD.size:], aad)
        except InvalidTag:
            raise CorruptionError(where, None, "sealed record fails authentication") from None

    @staticmethod
    def key_id_of(blob: bytes | memoryview) -> int:
        """The key id a sealed record names."""
        return int(_HEAD.unpack_from(blob, 0)[0])


def open_part(aead: AESGCM, part: int, data: bytes | memoryview, aad: bytes,
              where: str | os.PathLike[str]) -> bytes:
    """Decrypt part ``part`` of a multi-part record; CorruptionError if altered."""
    try:
        return aead.decrypt(_nonce(part), data, aad)
    except InvalidTag:
        raise CorruptionError(where, None, "sealed record fails authentication") from None


def seal_part(aead: AESGCM, part: int, data: bytes | memoryview, aad: bytes) -> bytes:
    return aead.encrypt(_nonce(part), data, aad)


HEAD_BYTES = _HEAD.size


# -- the key file ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_new(path: Path, obj: dict[str, Any], replace: bool) -> None:
    """Write the key file 0600 from the first byte (never a moment readable by others)."""
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite a key file
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def init_key_file(path: str | os.PathLike[str]) -> Keyring:
    """Create a new key file (refusing to replace one): a cluster secret and key 1, active."""
    p = Path(path)
    if p.exists():
        raise KeyFileError(f"key file {p} exists; refusing to replace it (keys rotate adds a key)")
    obj = {"format": FORMAT, "cluster_secret": _b64(os.urandom(KEY_BYTES)), "active": 1,
           "keys": [{"id": 1, "key": _b64(os.urandom(KEY_BYTES)), "created": _now()}]}
    try:
        _write_new(p, obj, replace=False)
    except OSError as e:
        raise KeyFileError(f"cannot write key file {p}: {e.strerror or e}") from None
    return load_key_file(p)


def rotate_key_file(path: str | os.PathLike[str]) -> Keyring:
    """Add a new key to the file and make it active; the old keys stay (to read old records)."""
    ring = load_key_file(path)
    new_id = max(ring.keys) + 1
    obj = _raw(Path(path))
    obj["keys"].append({"id": new_id, "key": _b64(os.urandom(KEY_BYTES)), "created": _now()})
    obj["active"] = new_id
    try:
        _write_new(Path(path), obj, replace=True)
    except OSError as e:
        raise KeyFileError(f"cannot write key file {path}: {e.strerror or e}") from None
    return load_key_file(path)


def remove_key(path: str | os.PathLike[str], key_id: int) -> Keyring:
    """Drop a key that is not active (after the re-encryption pass no record names it)."""
    ring = load_key_file(path)
    if key_id == ring.active:
        raise KeyFileError(f"key id {key_id} is the active key of {path}; rotate first")
    if key_id not in ring.keys:
        raise KeyFileError(f"key id {key_id} not in key file {path}")
    obj = _raw(Path(path))
    obj["keys"] = [k for k in obj["keys"] if k["id"] != key_id]
    _write_new(Path(path), obj, replace=True)
    return load_key_file(path)


def _raw(p: Path) -> dict[str, Any]:
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {p} does not exist (storgctl keys init {p} makes one)") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e.strerror or e}") from None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise KeyFileError(f"key file {p} is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise KeyFileError(f"key file {p} is not a storg key file (format {FORMAT!r})")
    return obj


def _decode_key(p: Path, what: str, text: object) -> bytes:
    try:
        if not isinstance(text, str):
            raise ValueError
        key = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise KeyFileError(f"key file {p}: {what} is not base64") from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {p}: {what} is {len(key)} bytes, not {KEY_BYTES}")
    return key


def load_key_file(path: str | os.PathLike[str]) -> Keyring:
    """Read and check the key file; KeyFileError (one line naming the file) for any problem.

    A file that other users can read is refused: a key readable by anyone
    on the machine protects nothing.
    """
    p = Path(os.path.abspath(path))
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {p} does not exist (storgctl keys init {p} makes one)") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e.strerror or e}") from None
    if mode & 0o077:
        raise KeyFileError(f"key file {p} is readable by other users (mode {mode & 0o777:04o}); "
                           f"chmod 600 {p}")
    obj = _raw(p)
    secret = _decode_key(p, "cluster_secret", obj.get("cluster_secret"))
    keys: dict[int, bytes] = {}
    entries = obj.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"key file {p} holds no keys")
    for entry in entries:
        kid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(kid, int) or isinstance(kid, bool) or not 0 < kid < 2**32:
            raise KeyFileError(f"key file {p}: a key id must be an integer 1..2^32-1, got {kid!r}")
        if kid in keys:
            raise KeyFileError(f"key file {p}: key id {kid} appears twice")
        keys[kid] = _decode_key(p, f"key {kid}", entry.get("key"))
    active = obj.get("active")
    if active not in keys:
        raise KeyFileError(f"key file {p}: the active key id {active!r} is not one of its keys")
    return Keyring(p, secret, keys, int(active))
