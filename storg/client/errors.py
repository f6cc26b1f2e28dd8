"""What can go wrong for a client, as exceptions a caller can tell apart.

Each class stands for one storgctl exit status (the README's "Exit
status"), so the command line maps exceptions to exit codes without looking
at messages, and a library user can catch "not found" without parsing
error codes.  The errors a node's reply can carry are defined with the
request protocol in :mod:`storg.net.errors` and listed here too, so a
library user finds every client exception in one module.
"""

from __future__ import annotations

from storg.net.errors import (
    BadRequest,
    ClusterUnavailable,
    CompactedError,
    ConflictError,
    DiskFull,
    IntegrityError,
    LimitExceeded,
    NotFoundError,
    PermissionDenied,
    ProtocolViolation,
    ServerError,
    error_for,
)

__all__ = [
    "BadRequest", "ClusterUnavailable", "CompactedError", "ConflictError", "DiskFull", "IntegrityError",
    "LimitExceeded", "LocalError",
    "NotFoundError", "PermissionDenied", "ProtocolViolation", "ServerError", "error_for",
]


class LocalError(Exception):
    """Reading the local source or writing the local sink failed (storgctl exit 2).

    Kept apart from OSError so that a disk error is never mistaken for a
    network failure and retried against another node.
    """
