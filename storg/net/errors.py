"""Errors of the request protocol: a node's ErrorReply as an exception, and a broken reply.

They live below the client library because every speaker of the client
protocol raises them: storgctl and the client library, and nodes reaching
one another's chunk stores and snapshot senders through the same port.
Each ServerError subclass stands for one storgctl exit status (see the
README's "Exit status"), so callers catch by class instead of parsing codes.
"""

from __future__ import annotations

from collections.abc import Callable

from storg.wire import ErrorCode


class ServerError(Exception):
    """The node answered with an ErrorReply (``code`` is an :class:`ErrorCode`)."""

    whole_connection = False
    """True for a refusal of the connection itself (request id 0: too many connections),
    not of one request: another node may well serve the request."""

    def __init__(self, code: int, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.leader = leader

    @property
    def not_leader(self) -> bool:
        return self.code == ErrorCode.NOT_LEADER


class NotFoundError(ServerError):
    """The path (or member) does not exist: storgctl exit 1."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.NOT_FOUND, message, leader)


class BadRequest(ServerError):
    """The request is malformed, e.g. an invalid path: storgctl exit 2."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message, leader)


class IntegrityError(ServerError):
    """A checksum or size did not match, on the server or as the client checked it: exit 4."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.INTEGRITY, message, leader)


class PermissionDenied(ServerError):
    """The connection's certificate (its role) does not allow the request: storgctl exit 1."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.PERMISSION_DENIED, message, leader)


class DiskFull(ServerError):
    """The node's free space is below its disk reserve; writes are refused: storgctl exit 3.

    Exit 3 ("cluster unavailable"), as etcd's NOSPACE alarm: the request was
    fine and may succeed once space is freed; nothing about it was wrong.
    """

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.DISK_FULL, message, leader)


class LimitExceeded(ServerError):
    """A limit of the node (requests in flight, uploads per connection, a size): storgctl exit 1."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.LIMIT_EXCEEDED, message, leader)


class ConflictError(ServerError):
    """The namespace is not as the request requires: a destination exists (mv, cp without
    ``--force``) or a conditional put's condition failed: storgctl exit 1."""

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.CONFLICT, message, leader)


class CompactedError(ServerError):
    """A watch asked to start at a log index that was compacted away: storgctl exit 1.

    As etcd's ErrCompacted: the events in between are gone, so the client
    lists the prefix afresh (which gives the state as of now) and watches
    from the index the error names.
    """

    def __init__(self, message: str, leader: str = "") -> None:
        super().__init__(ErrorCode.COMPACTED, message, leader)


class ProtocolViolation(Exception):
    """The node sent something that is not a valid reply."""


class ClusterUnavailable(Exception):
    """No leader or no quorum answered within the timeout (storgctl exit 3)."""


class TLSRefused(Exception):
    """Marks a TLS failure that is a refusal of a certificate (ours there, or theirs here).

    Both drivers of the client protocol raise a subclass of it (the Twisted
    one's is also a ConnectionLost), so storgctl and the retry policy tell
    a refused certificate (exit 2, said at once) from an outage.
    """


# The subclasses take (message, leader): their code is fixed.
_BY_CODE: dict[int, Callable[[str, str], ServerError]] = {
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.INTEGRITY: IntegrityError,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.DISK_FULL: DiskFull,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.CONFLICT: ConflictError,
    ErrorCode.COMPACTED: CompactedError,
}


def error_for(code: int, message: str, leader: str = "") -> ServerError:
    """The most specific exception for an ErrorReply, so callers catch by class."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return ServerError(code, message, leader)
    return cls(message, leader)
