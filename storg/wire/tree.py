"""Frames of the tree operations (issue 20): mv, cp, rm -r, conditional puts, watch.

Client requests and replies use type bytes 60-63 and 125-127 (41-59 are
the file store's, 120-122 scrub's); state machine commands use 70-73
(65-69 are the file store's, 80-95 the snapshot records').

Each namespace change is one command, so one log entry: a move of a
folder of a hundred thousand files is a few dozen bytes in the log, and
it applies in one step of the state machine, which is what makes it
atomic to readers (a listing is taken between two applies, never during
one).  ``client_id`` and ``seq`` give the commands the same retry-safe
session as put and rm.

A conditional put is the ordinary put command wrapped in
:class:`ConditionalPutCommand`, so the condition is checked by the state
machine when the entry applies, never by a leader looking at a state that
may already be stale.
"""

from __future__ import annotations

from storg.wire.codec import CODEC
from storg.wire.record import record
from storg.wire.schema import BOOL, BYTES32, STR16, U8, U64, layout, register_struct

# --- client requests and replies ----------------------------------------------------


@layout(U64, STR16, STR16, U64, U64, BOOL)
@record
class MoveRequest:
    """Rename the file or folder ``src`` to ``dst`` (``force``: replace what is at ``dst``)."""

    request_id: int
    src: str
    dst: str
    client_id: int
    seq: int
    force: bool = False


@layout(U64, STR16, STR16, U64, U64, BOOL, BOOL)
@record
class CopyRequest:
    """Copy ``src`` to ``dst`` in the namespace only: the copies refer to the same chunks."""

    request_id: int
    src: str
    dst: str
    client_id: int
    seq: int
    recursive: bool = False
    force: bool = False


@layout(U64, STR16, U64, U64)
@record
class RemoveTreeRequest:
    """Delete the file at ``prefix`` and every file below the folder ``prefix``."""

    request_id: int
    prefix: str
    client_id: int
    seq: int


@layout(U64, U64)
@record
class TreeDone:
    """A tree operation applied: ``files`` is how many files it moved, copied or deleted."""

    request_id: int
    files: int


@layout(U64, STR16, U64, U64, BOOL, STR16)
@record
class PutStartIf:
    """``PutStart`` with a condition checked at apply: the rest of the upload is the same.

    ``if_absent``: only if no file is at ``path``.  ``if_match``: only if
    the file at ``path`` has this SHA-256 (hex; empty for no such condition).
    """

    request_id: int
    path: str
    client_id: int
    seq: int
    if_absent: bool = False
    if_match: str = ""


@layout(U64, STR16, U64)
@record
class WatchRequest:
    """Stream the changes under the folder ``prefix`` from log index ``start`` on (0: from now)."""

    request_id: int
    prefix: str
    start: int = 0


WATCH_CREATE = 1
WATCH_UPDATE = 2
WATCH_DELETE = 3
WATCH_MOVE = 4
WATCH_KINDS = {WATCH_CREATE: "create", WATCH_UPDATE: "update", WATCH_DELETE: "delete", WATCH_MOVE: "move"}


@layout(U64, U64, U8, STR16, STR16, U64, STR16, BOOL)
@record
class WatchEvent:
    """One change under a watched prefix; ``index`` is the log index of the entry that made it.

    ``path`` is the file's path after the change (before it, for a
    delete); ``src`` the path it came from, for a move.  ``size`` and
    ``sha256`` describe the content after a create, update or move.
    ``more`` is always true: a watch ends only with an error or a closed
    connection.  Events of one entry come in path order, entries in log
    order.  An ``index`` with ``kind`` 0 and no path is a progress mark: every
    entry up to it has been looked at (so a resumed watch need not rescan them).
    """

    request_id: int
    index: int
    kind: int
    path: str
    src: str = ""
    size: int = 0
    sha256: str = ""
    more: bool = True


# --- state machine commands (log entry payloads) --------------------------------------


@layout(U64, U64, U64, STR16, STR16, BOOL)
@record
class MoveCommand:
    client_id: int
    seq: int
    modified_ns: int
    src: str
    dst: str
    force: bool


@layout(U64, U64, U64, STR16, STR16, BOOL, BOOL)
@record
class CopyCommand:
    client_id: int
    seq: int
    modified_ns: int
    src: str
    dst: str
    recursive: bool
    force: bool


@layout(U64, U64, U64, STR16)
@record
class RemoveTreeCommand:
    client_id: int
    seq: int
    modified_ns: int
    prefix: str


@layout(BOOL, STR16, BYTES32)
@record
class ConditionalPutCommand:
    """A put command (``PutFileCommand`` or ``PutInlineCommand``, encoded) applied only if its condition holds.

    The inner command carries the session (client_id, seq), so a retried
    conditional put replays the first outcome, refusal included.
    """

    if_absent: bool
    if_match: str
    command: bytes


_TYPE_BYTES: dict[int, type] = {
    60: MoveRequest, 61: CopyRequest, 62: RemoveTreeRequest, 63: TreeDone,
    125: WatchEvent, 126: PutStartIf, 127: WatchRequest,
    70: MoveCommand, 71: CopyCommand, 72: RemoveTreeCommand, 73: ConditionalPutCommand,
}

for _tb, _cls in _TYPE_BYTES.items():
    register_struct(CODEC, _tb, _cls)
