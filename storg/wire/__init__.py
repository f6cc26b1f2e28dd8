"""The wire format: one codec for every frame, and the byte layouts it is built on.

Use :data:`CODEC` (``CODEC.encode(obj)`` / ``CODEC.decode(body)``); every
decoding failure is a :class:`CodecError`.

The frame modules are imported on demand, not here: each frame class
costs some tens of microseconds to create (:mod:`storg.wire.record`), and a
``storgctl status`` that needs three of a hundred types should not pay
for the rest (see :meth:`Codec.load_on_demand`).  A module that builds a
frame has imported its class, which registered it; a frame of a type byte
not registered yet makes the codec import :data:`FRAME_MODULES` first.
"""

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
from storg.wire.reader import CodecError, Reader

FRAME_MODULES = (
    "storg.wire.admin",  # the membership and transfer frames
    "storg.wire.batch",  # batches of small files (put -r, get -r)
    "storg.wire.chunks",  # the file store's frames that only nodes send or apply
    "storg.wire.files",  # the file store's frames
    "storg.wire.objects",  # object attributes, compose, S3 keys (issue 18)
    "storg.wire.raft",  # Raft's messages (type bytes 1..13)
    "storg.wire.snapshots",  # the snapshot streaming frames
    "storg.wire.tree",  # mv, cp, rm -r, conditional puts, watch
)
"""The modules of storg.wire that register frames on CODEC when imported (a test checks the list)."""

CODEC.load_on_demand(FRAME_MODULES)

__all__ = [
    "BAD_REQUEST", "CODEC", "COMPACTED", "CONFLICT", "Codec", "CodecError", "ERROR_REPLY", "ErrorCode", "ErrorReply",
    "FRAME_MODULES",
    "HELLO", "HELLO_REFUSED", "Hello", "HelloRefused", "INTEGRITY", "INTERNAL", "MAX_FRAME_BYTES",
    "MEMBER_ADDRESS", "MemberAddress", "MemberRow", "NOT_FOUND", "NOT_LEADER", "PROTOCOL_VERSION",
    "ProbeCommand", "ProbeRead", "ProbeReply", "ProbeWrite", "Reader", "STATUS_REPLY",
    "STATUS_REQUEST", "StatusReply", "StatusRequest", "UNAVAILABLE",
]
