"""The wire format: one codec for every frame, and the byte layouts it is built on.

Use :data:`CODEC` (``CODEC.encode(obj)`` / ``CODEC.decode(body)``); every
decoding failure is a :class:`CodecError`.
"""

# Imported for what importing them does: each registers its frames on CODEC.
from storg.wire import (
    admin,  # noqa: F401  (the membership and transfer frames)
    batch,  # noqa: F401  (batches of small files: put -r, get -r)
    files,  # noqa: F401  (the file store's frames)
    snapshots,  # noqa: F401  (the snapshot streaming frames)
    tree,  # noqa: F401  (mv, cp, rm -r, conditional puts, watch)
)
from storg.wire.codec import (
    CODEC,
    ERROR_REPLY,
    HELLO,
    HELLO_REFUSED,
    MAX_FRAME_BYTES,
    MEMBER_ADDRESS,
    PROTOCOL_VERSION,
    STATUS_REPLY,
    STATUS_REQUEST,
    Codec,
)
from storg.wire.messages import (
    BAD_REQUEST,
    COMPACTED,
    CONFLICT,
    INTEGRITY,
    INTERNAL,
    NOT_FOUND,
    NOT_LEADER,
    UNAVAILABLE,
    ErrorCode,
    ErrorReply,
    Hello,
    HelloRefused,
    MemberAddress,
    MemberRow,
    ProbeCommand,
    ProbeRead,
    ProbeReply,
    ProbeWrite,
    StatusReply,
    StatusRequest,
)
from storg.wire.records import CodecError, Reader

__all__ = [
    "BAD_REQUEST", "CODEC", "COMPACTED", "CONFLICT", "Codec", "CodecError", "ERROR_REPLY", "ErrorCode", "ErrorReply",
    "HELLO", "HELLO_REFUSED", "Hello", "HelloRefused", "INTEGRITY", "INTERNAL", "MAX_FRAME_BYTES",
    "MEMBER_ADDRESS", "MemberAddress", "MemberRow", "NOT_FOUND", "NOT_LEADER", "PROTOCOL_VERSION",
    "ProbeCommand", "ProbeRead", "ProbeReply", "ProbeWrite", "Reader", "STATUS_REPLY",
    "STATUS_REQUEST", "StatusReply", "StatusRequest", "UNAVAILABLE",
]
