"""A twisted.web request that hands its body on as it arrives, with flow control.

twisted.web's :class:`~twisted.web.server.Request` collects the whole body
(in memory, or a temporary file past 100 KB) and only then renders: a
5 GiB PutObject would be on the node's disk once more before it reached
the cluster, and the upload's first chunk would wait for its last byte.
:class:`StreamingRequest` starts the exchange as soon as the headers are
in (``gotLength``, which :class:`~twisted.web.http.HTTPChannel` calls from
``allHeadersReceived``), passes each piece of body to it
(``handleContentChunk``), and tells it when the body is complete
(``process``, which ``requestReceived`` calls after the last byte).

Flow control is the transport's: while the exchange cannot take more (the
cluster upload has all its chunks in flight), it calls :meth:`pause`, the
node stops reading the socket, TCP's window closes, and the client waits.
At most one socket read arrives after a pause, so memory stays bounded by
the exchange's own buffers however large the body.
"""

from __future__ import annotations

import io
from typing import Any, Protocol, cast

from twisted.web import server


class Exchange(Protocol):
    """What a request drives: made when the headers are in, fed the body, told when it ends."""

    def body_chunk(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...


class ExchangeFactory(Protocol):
    def __call__(self, request: StreamingRequest) -> Exchange: ...


class StreamingRequest(server.Request):
    """A request whose body goes to an :class:`Exchange` piece by piece (never into ``content``)."""

    exchange: Exchange | None = None
    body_length: int | None = None
    """The Content-Length the client declared (None: chunked transfer encoding)."""

    def gotLength(self, length: int | None) -> None:
        # The request line is the channel's until requestReceived; the exchange needs it now.
        channel: Any = self.channel
        self.method = channel._command
        self.uri = channel._path
        self.clientproto = channel._version
        self.path, _, query = self.uri.partition(b"?")
        self.query = query
        self.body_length = length
        # Stays empty: requestReceived reads it (form bodies, which S3 has none of).
        self.content = io.BytesIO()
        self.paused = False
        factory: ExchangeFactory = channel.site.exchange_factory
        self.exchange = factory(self)

    def handleContentChunk(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.body_chunk(data)

    def process(self) -> None:
        """The whole body is in (twisted.web calls this from requestReceived)."""
        self.site = cast(Any, self.channel).site
        if self.exchange is not None:
            self.exchange.body_end()

    def _transport(self) -> Any:
        """The connection's transport; None once the answer is done (twisted.web drops the channel)."""
        channel = getattr(self, "channel", None)
        return None if channel is None else channel.transport

    def pause(self) -> None:
        """Stop reading this connection until :meth:`resume` (the upload is catching up)."""
        transport = self._transport()
        if not self.paused and transport is not None:
            self.paused = True
            transport.pauseProducing()

    def resume(self) -> None:
        transport = self._transport()
        if self.paused and transport is not None:
            self.paused = False
            transport.resumeProducing()

    @property
    def gone(self) -> bool:
        """The client went away (nothing more can be written)."""
        return bool(self._disconnected)


class StreamingSite(server.Site):
    """A Site whose requests are :class:`StreamingRequest` s driven by ``exchange_factory``.

    No resource tree: every request goes to its exchange, which routes it
    itself (S3's paths are keys, not resources).
    """

    def __init__(self, exchange_factory: ExchangeFactory, *, timeout: float = 300.0) -> None:
        from twisted.web.resource import Resource
        super().__init__(Resource(), requestFactory=StreamingRequest, timeout=timeout)
        self.exchange_factory = exchange_factory
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """No access log line per request (the node's log is for the node's events)."""
