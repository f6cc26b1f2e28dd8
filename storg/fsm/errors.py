"""The state machine's refusals: deterministic, each with the error code the client sees.

A refused command raises one of these on every node alike (the node hands
it to the proposer as the command's answer); a client session records the
class name, so a retried command replays the same refusal.
"""

from __future__ import annotations

from storg.wire import (
    BAD_REQUEST,
    CONFLICT,
    INTERNAL,
    NOT_FOUND,
    UNAVAILABLE,
    ErrorCode,
)


class FileStoreError(Exception):
    """A command or query the state machine refuses; ``code`` is what the client is told."""

    code: ErrorCode = INTERNAL


class NotFound(FileStoreError):
    code = NOT_FOUND


class ChunkMissing(FileStoreError):
    """A dedup reuse named a chunk the cluster no longer has (collected meanwhile).

    UNAVAILABLE because nothing is wrong with the request: the client retries
    the put with the same seq, and the leader uploads the chunk afresh.
    """

    code = UNAVAILABLE


class StaleRequest(FileStoreError):
    """A command older than the last one its client session applied."""

    code = BAD_REQUEST


class StaleChange(FileStoreError):
    """A holder change decided on a chunk map entry that has changed since (or is gone).

    The leader's repair re-reads the chunk map and decides again.
    """

    code = UNAVAILABLE


class InvalidCommand(FileStoreError):
    """An entry that is not a valid command: undecodable, unknown or inconsistent."""

    code = BAD_REQUEST


class Conflict(FileStoreError):
    """The namespace is not as the command requires: a destination exists (mv and cp without
    force) or a conditional put's condition does not hold at apply."""

    code = CONFLICT


class SnapshotFormatError(ValueError):
    """Snapshot frames that decode but do not describe a consistent state."""


ERRORS: dict[str, type[FileStoreError]] = {
    cls.__name__: cls for cls in (NotFound, ChunkMissing, StaleRequest, StaleChange, InvalidCommand,
                                 Conflict)
}
