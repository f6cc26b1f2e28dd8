"""A fake node's client port for client-library tests: the file frames, with faults on demand.

It speaks the frames of ``storg/wire/files.py`` the way the contract in
notes/filestore.md says a node does (redirects, sessions, paging), keeps
files in memory, and can misbehave: answer NOT_LEADER, drop a connection
partway through a put or a get, corrupt a byte, stop reading an upload.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory

from storg.net.framing import FrameReceiver
from storg.net.tls_stream import TLSStreamFactory
from storg.wire import CODEC, ErrorCode, ErrorReply
from storg.wire.files import (
    ChunkRef,
    FileInfo,
    GetData,
    GetEnd,
    GetRequest,
    GetStart,
    LsReply,
    LsRequest,
    PutData,
    PutDone,
    PutEnd,
    PutReady,
    PutStart,
    RmDone,
    RmRequest,
    StatReply,
    StatRequest,
)


@dataclass
class _Upload:
    start: PutStart
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    parts: list[bytes] = field(default_factory=list)


class FakeNode:
    """One fake node listening on 127.0.0.1, port chosen by the OS."""

    def __init__(self, *, max_frame: int = 64 * 1024, page_size: int = 2,
                 get_frame: int = 16 * 1024, tls: Any = None) -> None:
        """``tls``: a :class:`storg.net.tls.ServerTLS` to serve with (mutual TLS), else plain TCP."""
        self.max_frame = max_frame
        self.page_size = page_size
        self.get_frame = get_frame
        self.files: dict[str, tuple[FileInfo, bytes]] = {}
        self.version = 0
        self.sessions: dict[int, tuple[int, Any]] = {}
        self.put_starts: list[PutStart] = []
        self.requests: list[Any] = []
        self.store_data = True
        # Faults (None / False: behave).
        self.redirect_to: str | None = None  # answer writes with NOT_LEADER naming this address
        self.unavailable = False  # answer everything with UNAVAILABLE
        self.drop_put_after: int | None = None  # bytes of PutData, once, then behave
        self.drop_after_commit = False  # apply the put, then drop instead of PutDone (once)
        self.drop_get_after: int | None = None  # bytes of GetData sent, every time
        self.stall_get_after: int | None = None  # bytes of GetData sent, then silence
        self.corrupt_get = False
        self.pause_after_ready = False
        self.damage_uploads = False  # a bit flips on the way in: PutEnd's checksum fails
        self.not_leader_after: int | None = None  # bytes of PutData, once: NOT_LEADER naming redirect_hint
        self.redirect_hint = ""
        self.ignore_put_end = False  # never answer: a leader that lost its quorum
        self.ready_late = False  # hold PutReady back until the PutEnd: a client must not wait for it
        self.skip_ready = False  # no PutReady at all, as a node that read PutStart and PutEnd at once
        self.disk_full: str | None = None  # "start" or "end": refuse the put there with DISK_FULL
        self.protocols: list[NodeProtocol] = []
        factory: Any = Factory.forProtocol(lambda: NodeProtocol(self))
        if tls is not None:
            factory = TLSStreamFactory(tls, factory)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.address = f"127.0.0.1:{self.port.getHost().port}"

    def add_file(self, path: str, data: bytes, modified_ns: int = 1_700_000_000_123_456_789) -> FileInfo:
        self.version += 1
        info = FileInfo(path, len(data), hashlib.sha256(data).hexdigest(), modified_ns, self.version,
                        (ChunkRef(hashlib.sha256(data).hexdigest(), len(data), ("n1", "n2")),))
        self.files[path] = (info, data)
        return info

    async def close(self) -> None:
        for proto in list(self.protocols):
            if proto.transport is not None:
                proto.transport.abortConnection()
        await self.port.stopListening()


class NodeProtocol(FrameReceiver):
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.uploads: dict[int, _Upload] = {}

    def connectionMade(self) -> None:
        self.node.protocols.append(self)

    def connectionLost(self, reason: object = None) -> None:
        super().connectionLost(reason)
        if self in self.node.protocols:
            self.node.protocols.remove(self)

    def send(self, frame: Any) -> None:
        self.sendString(CODEC.encode(frame))

    def error(self, request_id: int, code: ErrorCode, message: str, leader: str = "") -> None:
        self.send(ErrorReply(request_id, int(code), message, leader))

    def stringReceived(self, data: bytes) -> None:
        frame = CODEC.decode(data)
        node = self.node
        if not isinstance(frame, PutData):
            node.requests.append(frame)
        if node.unavailable and not isinstance(frame, (PutData, PutEnd)):
            self.error(frame.request_id, ErrorCode.UNAVAILABLE, "no quorum")
            return
        getattr(self, "on_" + type(frame).__name__)(frame)

    # --- writes ---------------------------------------------------------------

    def on_PutStart(self, frame: PutStart) -> None:
        node = self.node
        node.put_starts.append(frame)
        if node.redirect_to is not None:
            self.error(frame.request_id, ErrorCode.NOT_LEADER, "not the leader", node.redirect_to)
            return
        if node.disk_full == "start":
            self.error(frame.request_id, ErrorCode.DISK_FULL, "put refused: n1 is below its disk reserve")
            return
        self.uploads[frame.request_id] = _Upload(frame)
        if not node.ready_late and not node.skip_ready:
            self.send(PutReady(frame.request_id, node.max_frame))
        if node.pause_after_ready:
            self.transport.pauseProducing()

    def on_PutData(self, frame: PutData) -> None:
        upload = self.uploads.get(frame.request_id)
        if upload is None:
            return
        assert len(frame.data) <= self.node.max_frame
        if self.node.damage_uploads:
            frame = PutData(frame.request_id, b"!" + frame.data[1:])
        upload.hasher.update(frame.data)
        upload.size += len(frame.data)
        if self.node.store_data:
            upload.parts.append(frame.data)
        lost = self.node.not_leader_after
        if lost is not None and upload.size >= lost:
            self.node.not_leader_after = None
            del self.uploads[frame.request_id]
            self.error(frame.request_id, ErrorCode.NOT_LEADER, "lost leadership", self.node.redirect_hint)
            return
        limit = self.node.drop_put_after
        if limit is not None and upload.size >= limit:
            self.node.drop_put_after = None
            self.transport.abortConnection()

    def on_PutEnd(self, frame: PutEnd) -> None:
        upload = self.uploads.pop(frame.request_id, None)
        node = self.node
        if upload is None or node.ignore_put_end:
            return
        if node.ready_late and not node.skip_ready:
            self.send(PutReady(frame.request_id, node.max_frame))
        if frame.size != upload.size or frame.sha256 != upload.hasher.hexdigest():
            self.error(frame.request_id, ErrorCode.INTEGRITY, "size or checksum mismatch")
            return
        if node.disk_full == "end":
            self.error(frame.request_id, ErrorCode.DISK_FULL, "chunk reached only 1 of 3 holders (full)")
            return
        start = upload.start
        last = node.sessions.get(start.client_id)
        if last is not None and last[0] == start.seq:
            info = last[1]
        else:
            data = b"".join(upload.parts)
            node.version += 1
            info = FileInfo(start.path, upload.size, frame.sha256, 1_700_000_000_000_000_000,
                            node.version)
            node.files[start.path] = (info, data)
            node.sessions[start.client_id] = (start.seq, info)
        if node.drop_after_commit:
            node.drop_after_commit = False
            self.transport.abortConnection()
            return
        self.send(PutDone(frame.request_id, info))

    def on_RmRequest(self, frame: RmRequest) -> None:
        node = self.node
        if node.redirect_to is not None:
            self.error(frame.request_id, ErrorCode.NOT_LEADER, "not the leader", node.redirect_to)
            return
        last = node.sessions.get(frame.client_id)
        if last is not None and last[0] == frame.seq:
            self.send(RmDone(frame.request_id, last[1]))
            return
        if frame.path not in node.files:
            self.error(frame.request_id, ErrorCode.NOT_FOUND, f"no such file {frame.path}")
            return
        del node.files[frame.path]
        node.version += 1
        node.sessions[frame.client_id] = (frame.seq, node.version)
        self.send(RmDone(frame.request_id, node.version))

    # --- reads ----------------------------------------------------------------

    def on_GetRequest(self, frame: GetRequest) -> None:
        entry = self.node.files.get(frame.path)
        if entry is None:
            self.error(frame.request_id, ErrorCode.NOT_FOUND, f"no such file {frame.path}")
            return
        info, data = entry
        if self.node.corrupt_get and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
        self.send(GetStart(frame.request_id, info))
        sent = 0
        step = self.node.get_frame
        for offset in range(0, len(data), step):
            if self.node.stall_get_after is not None and sent >= self.node.stall_get_after:
                return
            limit = self.node.drop_get_after
            if limit is not None and sent >= limit:
                self.transport.loseConnection()  # what was sent arrives, then the close
                return
            piece = data[offset:offset + step]
            self.send(GetData(frame.request_id, piece))
            sent += len(piece)
        if self.node.drop_get_after is not None:
            self.transport.loseConnection()
            return
        self.send(GetEnd(frame.request_id))

    def on_LsRequest(self, frame: LsRequest) -> None:
        prefix = frame.prefix
        infos = [
            FileInfo(i.path, i.size, i.sha256, i.modified_ns, i.version)
            for path, (i, _) in sorted(self.node.files.items())
            if prefix == "/" or path == prefix or path.startswith(prefix + "/")
        ]
        size = self.node.page_size
        pages = [infos[i:i + size] for i in range(0, len(infos), size)] or [[]]
        for n, page in enumerate(pages):
            self.send(LsReply(frame.request_id, tuple(page), n < len(pages) - 1))

    def on_StatRequest(self, frame: StatRequest) -> None:
        entry = self.node.files.get(frame.path)
        if entry is None:
            self.error(frame.request_id, ErrorCode.NOT_FOUND, f"no such file {frame.path}")
            return
        self.send(StatReply(frame.request_id, entry[0]))
