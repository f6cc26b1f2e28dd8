"""The vocabulary of the consensus core: entries, messages, state, Ready.

These types are the contract between the pure core (``storg.raft``), the
codec (``storg.wire``), the storage layer (``storg.storage``) and the Twisted
driver (``storg.node.raft_node``).  They are plain value objects with no behaviour
beyond validation helpers, so every layer can import them without importing
anything else.

Node ids are short strings (``[a-z0-9_-]{1,64}``, see the config), because
operators name their nodes; the empty string means "nobody" (no vote, no
leader known).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

NONE = ""
"""The node id meaning "nobody": no vote cast, no leader known."""


class EntryType(IntEnum):
    """What an entry's ``data`` means.

    NORMAL entries carry an opaque command for the state machine; an empty
    NORMAL entry is the no-op a new leader appends (paper section 8).
    CONF_CHANGE entries carry an encoded :class:`ConfChange`.
    """

    NORMAL = 0
    CONF_CHANGE = 1


class Entry(NamedTuple):
    """One log entry.

    A named tuple rather than a frozen dataclass: entries are made by the
    thousand on every hot path (decoding appends, replaying the log) and a
    tuple is built about three times faster; and the write-ahead log can
    split a batch into its columns in one C-level pass (``zip(*entries)``).
    Note that the field ``index`` hides ``tuple.index``.
    """

    term: int
    index: int  # type: ignore[assignment]  # hides tuple.index, on purpose (see above)
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate bytes this entry costs in a message, for byte limits."""
        return len(self.data) + 24


class ConfChangeType(IntEnum):
    ADD_VOTER = 0  # add a voter, or promote a learner to voter
    ADD_LEARNER = 1  # add a learner (non-voting, receives the log)
    REMOVE = 2  # remove a voter or a learner


_CC_HEAD = struct.Struct(">BH I")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One-server-at-a-time membership change (dissertation 4.1).

    ``context`` is opaque to the core; the node layer puts the new member's
    addresses there so every node learns them when the entry is applied.

    The byte layout lives here rather than in ``storg.wire`` because the core
    must decode committed CONF_CHANGE entries itself and may import nothing
    above it; ``storg.wire`` embeds these bytes unchanged as entry data.
    Layout: type u8, len(node_id) u16, len(context) u32, node_id, context.
    """

    type: ConfChangeType
    node_id: str
    context: bytes = b""

    def encode(self) -> bytes:
        nid = self.node_id.encode("utf-8")
        return _CC_HEAD.pack(int(self.type), len(nid), len(self.context)) + nid + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Decode; raises ValueError on any malformed input."""
        if len(data) < _CC_HEAD.size:
            raise ValueError("conf change too short")
        t, nlen, clen = _CC_HEAD.unpack_from(data, 0)
        if _CC_HEAD.size + nlen + clen != len(data):
            raise ValueError("conf change length mismatch")
        try:
            cctype = ConfChangeType(t)
        except ValueError:
            raise ValueError(f"unknown conf change type {t}") from None
        off = _CC_HEAD.size
        try:
            nid = data[off:off + nlen].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("conf change node id is not UTF-8") from None
        return cls(cctype, nid, bytes(data[off + nlen:]))


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership in force: who votes and who only listens."""

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    def members(self) -> frozenset[str]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a message that depends on it is sent."""

    term: int = 0
    vote: str = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot; the bytes themselves travel outside the core.

    The core never holds snapshot data: a namespace of a million files is
    streamed by the node layer from the storage layer.  The core only needs
    to know which log prefix the snapshot replaces and the membership at
    that point.
    """

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


class MessageType(IntEnum):
    APPEND = 1  # AppendEntries (also carries the commit index)
    APPEND_RESP = 2
    VOTE = 3  # RequestVote
    VOTE_RESP = 4
    PRE_VOTE = 5  # dissertation 9.6: would you vote for me?
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # empty AppendEntries without log matching; carries context for ReadIndex
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # InstallSnapshot (metadata; data streamed beside it)
    TIMEOUT_NOW = 10  # leadership transfer: start an election now (dissertation 3.10)
    READ_INDEX = 11  # follower -> leader: please confirm a read
    READ_INDEX_RESP = 12  # leader -> follower: safe at ``index``
    TRANSFER_LEADER = 13  # to the leader: hand leadership to the node id in ``context``


@dataclass(slots=True)
class Message:
    """One Raft message. Fields unused by a type keep their defaults.

    * APPEND: ``index``/``log_term`` identify the entry preceding
      ``entries``; ``commit`` is the leader's commit index.
    * APPEND_RESP: ``index`` is the last index the follower now matches, or
      on ``reject`` the index that was rejected; ``reject_hint`` and
      ``hint_term`` implement fast backtracking: the follower's conflicting
      term and the first index it holds of that term (or its last index + 1
      when its log is too short, with ``hint_term`` 0).
    * VOTE / PRE_VOTE: ``index``/``log_term`` are the candidate's last entry;
      ``context`` is ``b"transfer"`` when the campaign follows TIMEOUT_NOW
      (which lets it through check-quorum's lease).
    * HEARTBEAT / HEARTBEAT_RESP / READ_INDEX / READ_INDEX_RESP: ``context``
      is the ReadIndex request id; ``index`` carries the safe read index in
      READ_INDEX_RESP.
    * SNAPSHOT: ``snapshot`` describes it.
    """

    type: MessageType
    frm: str
    to: str
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    hint_term: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read that became safe: serve it once applied index >= ``index``."""

    index: int
    context: bytes


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3
    LEARNER = 4  # a follower that is not a voter in the current configuration


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (status, logs), not persisted."""

    leader: str
    role: Role
    term: int


@dataclass(slots=True)
class Ready:
    """Everything the driver must do, in this order:

    1. persist ``snapshot`` (if any), then ``entries`` (truncating any
       existing suffix from ``entries[0].index``), then ``hard_state``
       (if not None), all durably;
    2. send ``messages``;
    3. apply ``committed_entries`` to the state machine and answer
       ``read_states`` once applied;
    4. call ``core.advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)


@dataclass(slots=True)
class PersistedState:
    """What a node finds on disk at start: the inputs to a new RaftCore."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: list[Entry] = field(default_factory=list)
