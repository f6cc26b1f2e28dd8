"""Load and validate a node's YAML configuration (README.rst, section "Configuration").

A node that starts with a wrong configuration does damage that is hard to
undo (it may bootstrap a second cluster, or vote under the wrong name), so
everything is checked before anything else happens, and every problem is
reported as one line that names the file and the key: the operator should
be able to fix it without reading code.

The result is a tree of frozen dataclasses: the rest of the program never
sees raw YAML, never needs a default, and cannot change its configuration
by accident.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from storg.names import NODE_ID_RE

_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024

PROPOSAL_HEADROOM = 64 * 1024
"""Bytes an APPEND between peers needs around its entries (header, node ids, the genesis
membership); ``tests/test_limits_proposal.py`` checks it against the codec."""

FRAME_LIMIT = 8 * 1024 * 1024
"""The largest frame body any connection carries (``storg.wire.MAX_FRAME_BYTES``, which a
test keeps equal: config sits below the codec and cannot import it)."""

MAX_PROPOSAL_LIMIT = FRAME_LIMIT - PROPOSAL_HEADROOM
"""The most ``limits.max_proposal_bytes`` may be: an entry of that size still fits one APPEND."""

MIN_PROPOSAL_LIMIT = 64 * 1024
"""The least it may be: the node's own commands must fit (a collect of 1,000 chunks is
about 32 KiB, a small file's entry 4 KiB of data and a path of up to 1 KiB)."""


class ConfigError(Exception):
    """A configuration the node must refuse to start with.

    ``str()`` is one line, ``FILE: KEY: REASON`` (or ``FILE: REASON`` when
    the whole file is at fault), ready to print before exiting non-zero.
    """

    def __init__(self, path: str, key: str | None, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.key}: {self.reason}" if self.key else f"{self.path}: {self.reason}"
        # One line whatever the reason says (YAML errors carry newlines).
        return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint. ``host`` is bare (no brackets), ready for listenTCP/connectTCP."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Member:
    """One initial cluster member as every node knows it."""

    peer: Address
    client: Address


@dataclass(frozen=True, slots=True)
class RaftTuning:
    heartbeat_ms: int = 50
    election_timeout_ms: tuple[int, int] = (300, 600)
    snapshot_every: int = 10000


@dataclass(frozen=True, slots=True)
class FileTuning:
    """The ``files:`` section.  Seconds and rates may be fractional (tests scale them down)."""

    replication_factor: int = 3
    chunk_size: int = 1024 * 1024
    repair_grace_s: float = 600.0
    """How long a holder may be unreachable before its chunks are copied elsewhere."""
    repair_rate_mb_s: float = 50.0
    """Repair copies at most this many MiB per second, leaving the rest to clients."""
    repair_interval_s: float = 10.0
    """The leader looks for chunks to repair this often."""
    scrub_rate_mb_s: float = 20.0
    """Each node re-reads its chunks at most this fast."""
    scrub_interval_s: float = 86400.0
    """Seconds from the start of one scrub pass over a node's chunks to the next."""
    orphan_grace_s: float = 3600.0
    """Chunk files no committed file refers to are deleted once this old (crashed uploads)."""
    gc_interval_s: float = 30.0
    """Garbage collection (unreferenced chunks, orphan files) runs this often."""
    disk_reserve_mb: int = 256
    """Free MiB of the data_dir's file system below which new file bytes are refused (0: never).

    The room a node needs to keep working once puts stop: a WAL segment
    rolls at 64 MiB (and keeps 1 MiB of zero fill), an automatic snapshot
    is written whole before the previous one is deleted, deletes and
    membership changes still append to the log, and uploads already
    accepted still land (8 chunks in flight each).  256 MiB covers all of
    that for a namespace of a few hundred thousand files; a fixed size,
    not a percentage, because what must fit does not grow with the disk.
    """


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The ``tls:`` section: absolute paths of the CA, this node's certificate and its key.

    Only the paths: the files are read and checked when the node builds its
    TLS contexts (:class:`storg.net.tls.TLSCredentials`), which reports a
    bad file as one line naming the key, before twistd daemonizes.
    """

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class LimitTuning:
    """The ``limits:`` section: what one connection or one request may cost a node.

    The defaults are generous for every real client (storgctl, the client
    library, other nodes) and small enough that a stranger cannot exhaust
    the node's file descriptors, memory or disk (README.rst, "Limits").
    """

    max_client_connections: int = 512
    """Open connections to the client port; beyond it a new one is answered
    LIMIT_EXCEEDED and closed (the default soft limit on open files is 1024)."""
    max_peer_connections: int = 64
    """Open inbound connections to the peer port (each member keeps one)."""
    idle_timeout_s: float = 300.0
    """A client-port connection with no request in flight that sent nothing for this long is closed."""
    max_requests_in_flight: int = 256
    """Requests of one connection being handled at once; past it the node stops reading that
    connection until one finishes (flow control, not an error)."""
    max_uploads_per_connection: int = 32
    """Puts open at once on one connection (each may hold 8 chunks in memory); more are refused."""
    max_proposal_bytes: int = 4 * 1024 * 1024
    """The largest command proposed to the Raft log (a file's metadata, a probe)."""
    snapshot_resume_grace_s: float = 10.0
    """A partial snapshot upload whose connection dropped is deleted unless resumed this soon."""


@dataclass(frozen=True, slots=True)
class S3Settings:
    """The ``s3:`` section: the S3 gateway's tuning (the gateway itself runs when ``s3_listen`` is set)."""

    multipart_expiry_s: float = 7 * 86400.0
    """A multipart upload neither completed nor aborted this long after it was created is
    removed (its parts' chunks are then collected), by the leader's gateway."""
    expiry_interval_s: float = 3600.0
    """How often the leader's gateway looks for expired multipart uploads."""


@dataclass(frozen=True)
class LogSettings:
    """The ``log`` section: how the node writes its log.

    ``format: text`` (the default) leaves twistd's own text log as it is;
    ``format: json`` writes one JSON object per line (twisted.logger's
    JSON format, with the node id on every event and repeated warnings
    summarised), to ``path`` (relative to the config file) or, without one,
    to twistd's standard output (the terminal or supervisor with ``-n``).
    """

    format: str = "text"
    path: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    peer_listen: Address
    client_listen: Address
    http_listen: Address | None
    cluster: dict[str, Member] = field(hash=False)
    s3_listen: Address | None = None
    """The S3 gateway's listener (storg.gateway); None: no gateway."""
    s3: S3Settings = field(default_factory=S3Settings)
    join: bool = False
    cluster_token: str = "storg"
    raft: RaftTuning = field(default_factory=RaftTuning)
    files: FileTuning = field(default_factory=FileTuning)
    tls: TLSFiles | None = None
    """Mutual TLS on every listener and connection; None: plain TCP."""
    tls_off: bool = False
    """``tls: off`` was written: plain TCP allowed on non-loopback addresses (the operator's choice)."""
    limits: LimitTuning = field(default_factory=LimitTuning)
    log: LogSettings = field(default_factory=LogSettings)
    key_file: Path | None = None
    """``encryption: {key_file}``: the cluster key file (absolute); None: no encryption at rest.

    Only the path: the node reads and checks the file when it opens its
    data_dir, before twistd daemonizes (storg.storage.keys)."""
    source: Path | None = None

    def listen_addresses(self) -> dict[str, Address]:
        """Every address this node listens on, by config key."""
        found = {"peer_listen": self.peer_listen, "client_listen": self.client_listen}
        if self.http_listen is not None:
            found["http_listen"] = self.http_listen
        if self.s3_listen is not None:
            found["s3_listen"] = self.s3_listen
        return found

    @property
    def plaintext(self) -> bool:
        """True when the node serves plain TCP (it logs a warning at start saying so)."""
        return self.tls is None

    def peer_addresses(self) -> dict[str, Address]:
        """The other initial members' peer addresses (what the peer transport dials)."""
        return {nid: m.peer for nid, m in self.cluster.items() if nid != self.node_id}


def parse_address(text: object) -> Address:
    """Parse ``HOST:PORT`` (or ``[IPV6]:PORT``); raises ValueError with a short reason.

    Kept public because the CLI parses the same form (``--peer``, ``--cluster``).
    """
    if not isinstance(text, str):
        raise ValueError("must be a string HOST:PORT")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        host, port_text = text[1:close], text[close + 2:]
        try:
            if not isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
                raise ValueError
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
        _check_host(host)
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not within 1-65535")
    return Address(host, port)


def _check_host(host: str) -> None:
    labels = host.split(".")
    if all(label.isdigit() for label in labels if label) and any(labels):
        # Looks numeric: it must be a real IPv4 literal, not a hostname.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
        return
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name or IPv4 address")


def cluster_id(config: NodeConfig) -> str:
    """The cluster's identity, computed identically by every initial member.

    Derived from the sorted member ids with their peer addresses and the
    cluster token, so nodes started from the same ``cluster`` section agree
    without talking, while a second cluster with the same members but
    another token (or other members) gets another id and is refused.
    """
    canonical = json.dumps(
        {
            "token": config.cluster_token,
            "members": [[nid, str(config.cluster[nid].peer)] for nid in sorted(config.cluster)],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    result: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark)
        if key in result:
            raise _DuplicateKey(key, key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


class _DuplicateKey(Exception):
    def __init__(self, key: object, mark: yaml.Mark) -> None:
        super().__init__(key)
        self.key = key
        self.mark = mark


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_TOP_KEYS = {
    "node_id", "data_dir", "peer_listen", "client_listen", "http_listen", "s3_listen", "s3",
    "cluster", "join", "cluster_token", "raft", "files", "tls", "limits", "log", "encryption",
}
_LOG_KEYS = {"format", "path"}
_S3_KEYS = {"multipart_expiry_s", "expiry_interval_s"}
LOG_FORMATS = ("text", "json")
_TLS_KEYS = {"ca", "cert", "key"}
_ENCRYPTION_KEYS = {"key_file"}
_RAFT_KEYS = {"heartbeat_ms", "election_timeout_ms", "snapshot_every"}
_FILES_KEYS = {
    "replication_factor", "chunk_size", "repair_grace_s", "repair_rate_mb_s", "repair_interval_s",
    "scrub_rate_mb_s", "scrub_interval_s", "orphan_grace_s", "gc_interval_s", "disk_reserve_mb",
}
_FILES_NUMBERS = ("repair_grace_s", "repair_rate_mb_s", "repair_interval_s", "scrub_rate_mb_s",
                  "scrub_interval_s", "orphan_grace_s", "gc_interval_s")
_MEMBER_KEYS = {"peer", "client"}
_LIMITS_INTS = ("max_client_connections", "max_peer_connections", "max_requests_in_flight",
                "max_uploads_per_connection", "max_proposal_bytes")
_LIMITS_NUMBERS = ("idle_timeout_s", "snapshot_resume_grace_s")
_LIMITS_KEYS = {*_LIMITS_INTS, *_LIMITS_NUMBERS}


class _Checker:
    """Validates one file's raw mapping; every error names ``self.path`` and a dotted key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str | None, reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason)

    def mapping(self, value: object, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def required(self, raw: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if key not in raw:
            raise self.fail(prefix + key, "required key is missing")
        if raw[key] is None:
            raise self.fail(prefix + key, "required key has no value")
        return raw[key]

    def address(self, value: object, key: str) -> Address:
        try:
            return parse_address(value)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def positive_int(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be a positive integer, got {value!r}")
        return value

    def positive_number(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise self.fail(key, f"must be a positive number, got {value!r}")
        return float(value)

    def node_id(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
            raise self.fail(key, f"{value!r} must be 1-64 characters of a-z, 0-9, '_' and '-'")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate the YAML file at ``path``; raises :class:`ConfigError`."""
    shown = os.fspath(path)
    check = _Checker(shown)
    try:
        with open(shown, "rb") as f:
            text = f.read()
    except OSError as e:
        raise check.fail(None, f"cannot read the configuration file: {e.strerror or e}") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise check.fail(str(e.key), f"duplicate key (line {e.mark.line + 1})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise check.fail(None, f"{where}not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise check.fail(None, f"the top level must be a mapping of keys, got {_kind(raw)}")
    for key in raw:
        if key not in _TOP_KEYS:
            raise check.fail(str(key), f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")

    node_id = check.node_id(check.required(raw, "node_id"), "node_id")
    data_dir = _data_dir(check, check.required(raw, "data_dir"), shown)
    peer_listen = check.address(check.required(raw, "peer_listen"), "peer_listen")
    client_listen = check.address(check.required(raw, "client_listen"), "client_listen")
    http_raw = raw.get("http_listen")
    http_listen = None if http_raw is None else check.address(http_raw, "http_listen")
    s3_raw = raw.get("s3_listen")
    s3_listen = None if s3_raw is None else check.address(s3_raw, "s3_listen")
    _check_distinct(check, peer_listen=peer_listen, client_listen=client_listen, http_listen=http_listen,
                    s3_listen=s3_listen)

    join = raw.get("join", False)
    if join is None:
        join = False
    if not isinstance(join, bool):
        raise check.fail("join", f"must be true or false, got {join!r}")

    token = raw.get("cluster_token", "storg")
    if not isinstance(token, str) or not token:
        raise check.fail("cluster_token", f"must be a non-empty string, got {token!r}")

    if raw.get("cluster") is None and join:
        cluster: dict[str, Member] = {}
    else:
        cluster = _cluster(check, check.required(raw, "cluster"))
    if not join and node_id not in cluster:
        raise check.fail(
            "cluster", f"this node ({node_id}) is not a member; add it, or set join: true to be added later")

    tls, tls_off = _tls(check, raw.get("tls", None), shown, "tls" in raw)
    if tls is None and not tls_off:
        for key, address in (("peer_listen", peer_listen), ("client_listen", client_listen),
                             ("http_listen", http_listen), ("s3_listen", s3_listen)):
            if address is not None and not is_loopback(address.host):
                raise check.fail(
                    key, f"{address} is not a loopback address, and without TLS a node serves only on "
                         "loopback: add tls: {ca: ..., cert: ..., key: ...} (storgctl certs init "
                         "makes them), or tls: off to serve plain TCP on the network anyway")

    return NodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        peer_listen=peer_listen,
        client_listen=client_listen,
        http_listen=http_listen,
        cluster=cluster,
        s3_listen=s3_listen,
        s3=_s3(check, raw.get("s3")),
        join=join,
        cluster_token=token,
        raft=_raft(check, raw.get("raft")),
        files=_files(check, raw.get("files")),
        tls=tls,
        tls_off=tls_off,
        limits=_limits(check, raw.get("limits")),
        log=_log(check, raw.get("log"), shown),
        key_file=_encryption(check, raw.get("encryption"), shown),
        source=Path(os.path.abspath(shown)),
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal or a host name) can only be reached from this machine.

    ``localhost`` counts (it resolves to loopback by convention and RFC 6761);
    any other name does not, since what it resolves to can change.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls(check: _Checker, value: object, shown: str, present: bool) -> tuple[TLSFiles | None, bool]:
    """``tls: {ca, cert, key}`` -> TLSFiles; ``tls: off`` -> (None, True); absent -> (None, False).

    YAML 1.1 reads a bare ``off`` as false, so false and the string "off"
    both mean off; ``true`` or ``on`` mean nothing (which files?) and are refused.
    """
    if not present:
        return None, False
    if value is False or value == "off":
        return None, True
    if not isinstance(value, dict):
        raise check.fail("tls", f"must be a mapping {{ca, cert, key}} of file paths, or off; got {value!r}")
    raw = check.mapping(value, "tls", _TLS_KEYS)
    base = os.path.dirname(os.path.abspath(shown))
    paths: dict[str, Path] = {}
    for key in ("ca", "cert", "key"):
        path = check.required(raw, key, "tls.")
        if not isinstance(path, str) or not path.strip():
            raise check.fail(f"tls.{key}", f"must be a file path, got {path!r}")
        # Not read here: the node reads and checks the files when it builds its TLS contexts.
        paths[key] = Path(os.path.normpath(os.path.join(base, os.path.expanduser(path))))
    return TLSFiles(paths["ca"], paths["cert"], paths["key"]), False


def _encryption(check: _Checker, value: object, shown: str) -> Path | None:
    """``encryption: {key_file: PATH}`` -> the key file's absolute path (relative to the config's folder)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise check.fail("encryption", f"must be a mapping {{key_file: PATH}}, got {value!r}")
    raw = check.mapping(value, "encryption", _ENCRYPTION_KEYS)
    path = check.required(raw, "key_file", "encryption.")
    if not isinstance(path, str) or not path.strip():
        raise check.fail("encryption.key_file", f"must be a file path, got {path!r}")
    base = os.path.dirname(os.path.abspath(shown))
    return Path(os.path.normpath(os.path.join(base, os.path.expanduser(path))))


def _data_dir(check: _Checker, value: object, shown: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise check.fail("data_dir", f"must be a non-empty path, got {value!r}")
    base = os.path.dirname(os.path.abspath(shown))
    return Path(os.path.normpath(os.path.join(base, os.path.expanduser(value))))


def _log(check: _Checker, value: object, shown: str) -> LogSettings:
    if value is None:
        return LogSettings()
    raw = check.mapping(value, "log", _LOG_KEYS)
    fmt = raw.get("format", "text")
    if fmt not in LOG_FORMATS:
        raise check.fail("log.format", f"must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    path = raw.get("path")
    if path is None:
        return LogSettings(fmt)
    if not isinstance(path, str) or not path.strip():
        raise check.fail("log.path", f"must be a non-empty path, got {path!r}")
    if fmt != "json":
        raise check.fail("log.path", "is for format: json (the text log goes where twistd's --logfile says)")
    base = os.path.dirname(os.path.abspath(shown))
    return LogSettings(fmt, Path(os.path.normpath(os.path.join(base, os.path.expanduser(path)))))


def _check_distinct(check: _Checker, **addresses: Address | None) -> None:
    seen: dict[Address, str] = {}
    for key, addr in addresses.items():
        if addr is None:
            continue
        if addr in seen:
            raise check.fail(key, f"{addr} is already used by {seen[addr]}")
        seen[addr] = key


def _cluster(check: _Checker, value: object) -> dict[str, Member]:
    if not isinstance(value, dict) or not value:
        raise check.fail("cluster", f"must be a non-empty mapping of node id to addresses, got {_kind(value)}")
    members: dict[str, Member] = {}
    peers: dict[Address, str] = {}
    for nid, spec in value.items():
        key = f"cluster.{nid}"
        check.node_id(nid, key)
        spec = check.mapping(spec, key, _MEMBER_KEYS)
        peer = check.address(check.required(spec, "peer", f"{key}."), f"{key}.peer")
        client = check.address(check.required(spec, "client", f"{key}."), f"{key}.client")
        if peer in peers:
            raise check.fail(f"{key}.peer", f"{peer} is also the peer address of {peers[peer]}")
        peers[peer] = nid
        members[nid] = Member(peer, client)
    return members


def _raft(check: _Checker, value: object) -> RaftTuning:
    default = RaftTuning()
    if value is None:
        return default
    raw = check.mapping(value, "raft", _RAFT_KEYS)
    heartbeat = check.positive_int(raw.get("heartbeat_ms", default.heartbeat_ms), "raft.heartbeat_ms")
    timeout = raw.get("election_timeout_ms", list(default.election_timeout_ms))
    key = "raft.election_timeout_ms"
    if not isinstance(timeout, list) or len(timeout) != 2:
        raise check.fail(key, f"must be a pair [MIN, MAX] of milliseconds, got {timeout!r}")
    low = check.positive_int(timeout[0], key)
    high = check.positive_int(timeout[1], key)
    if not low < high:
        raise check.fail(key, f"the minimum ({low}) must be below the maximum ({high})")
    if low <= heartbeat:
        raise check.fail(key, f"the minimum ({low}) must exceed raft.heartbeat_ms ({heartbeat})")
    snapshot_every = check.positive_int(raw.get("snapshot_every", default.snapshot_every), "raft.snapshot_every")
    return RaftTuning(heartbeat, (low, high), snapshot_every)


def _files(check: _Checker, value: object) -> FileTuning:
    default = FileTuning()
    if value is None:
        return default
    raw = check.mapping(value, "files", _FILES_KEYS)
    rf = check.positive_int(raw.get("replication_factor", default.replication_factor), "files.replication_factor")
    chunk = raw.get("chunk_size", default.chunk_size)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
        raise check.fail("files.chunk_size",
                         f"must be an integer within {MIN_CHUNK_SIZE}-{MAX_CHUNK_SIZE} bytes, got {chunk!r}")
    numbers = {key: check.positive_number(raw.get(key, getattr(default, key)), f"files.{key}")
               for key in _FILES_NUMBERS}
    reserve = raw.get("disk_reserve_mb", default.disk_reserve_mb)
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise check.fail("files.disk_reserve_mb",
                         f"must be a whole number of MiB, 0 or more (0 disables the reserve), got {reserve!r}")
    return FileTuning(rf, chunk, **numbers, disk_reserve_mb=reserve)


def _s3(check: _Checker, value: object) -> S3Settings:
    default = S3Settings()
    if value is None:
        return default
    raw = check.mapping(value, "s3", _S3_KEYS)
    return S3Settings(**{key: check.positive_number(raw.get(key, getattr(default, key)), f"s3.{key}")
                         for key in sorted(_S3_KEYS)})


def _limits(check: _Checker, value: object) -> LimitTuning:
    default = LimitTuning()
    if value is None:
        return default
    raw = check.mapping(value, "limits", _LIMITS_KEYS)
    ints = {key: check.positive_int(raw.get(key, getattr(default, key)), f"limits.{key}")
            for key in _LIMITS_INTS}
    numbers = {key: check.positive_number(raw.get(key, getattr(default, key)), f"limits.{key}")
               for key in _LIMITS_NUMBERS}
    proposal = ints["max_proposal_bytes"]
    if not MIN_PROPOSAL_LIMIT <= proposal <= MAX_PROPOSAL_LIMIT:
        raise check.fail("limits.max_proposal_bytes",
                         f"must be within {MIN_PROPOSAL_LIMIT}-{MAX_PROPOSAL_LIMIT} bytes (the node's own "
                         f"commands must fit, and an APPEND between peers must carry it), got {proposal}")
    return LimitTuning(
        max_client_connections=ints["max_client_connections"],
        max_peer_connections=ints["max_peer_connections"],
        idle_timeout_s=numbers["idle_timeout_s"],
        max_requests_in_flight=ints["max_requests_in_flight"],
        max_uploads_per_connection=ints["max_uploads_per_connection"],
        max_proposal_bytes=ints["max_proposal_bytes"],
        snapshot_resume_grace_s=numbers["snapshot_resume_grace_s"],
    )
