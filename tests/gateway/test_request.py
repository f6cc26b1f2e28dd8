"""StreamingRequest over a real socket: the body reaches the exchange as it arrives, never buffered
whole, and the socket is paused while the exchange's sink is busy (flow control by TCP).

The client is a plain socket in a thread (it blocks in sendall while the node's receive window
is closed); the server is :class:`storg.gateway.request.StreamingSite` on this reactor with an
exchange whose sink takes each piece a moment later, as a cluster upload with its chunks in
flight does.
"""

from __future__ import annotations

import hashlib
import socket

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from storg.gateway.body import BodyPump
from storg.gateway.request import StreamingRequest, StreamingSite

BODY_MIB = 48


class SlowExchange:
    """Hashes the body through a BodyPump whose sink completes each write on a later turn."""

    made: list[SlowExchange] = []

    def __init__(self, request: StreamingRequest) -> None:
        self.request = request
        self.md5 = hashlib.md5()
        self.in_flight = 0
        self.max_held = 0
        self.headers_seen_at_start = (request.method, request.path, request.getHeader(b"x-test"))
        self.pump = BodyPump(request, self.write, observers=(self.md5,))
        SlowExchange.made.append(self)

    def write(self, data: bytes) -> defer.Deferred[None]:
        self.in_flight = len(data)
        self.max_held = max(self.max_held, self.in_flight + sum(map(len, self.pump.pending)))
        return deferLater(reactor, 0.002, lambda: None)

    def body_chunk(self, data: bytes) -> None:
        self.pump.feed(data)
        self.max_held = max(self.max_held, self.in_flight + sum(map(len, self.pump.pending)))

    def body_end(self) -> None:
        self.buffered = self.request.content.tell()

        def answer(_: object) -> None:
            body = self.md5.hexdigest().encode()
            self.request.setHeader(b"Content-Length", str(len(body)).encode())
            self.request.write(body)
            self.request.finish()
        self.pump.end().addCallback(answer)


def _send(port: int, head: bytes, body_mib: int) -> bytes:
    piece = bytes(range(256)) * 4096  # 1 MiB
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        for _ in range(body_mib):
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest_twisted.ensureDeferred
async def test_a_large_body_streams_through_with_bounded_memory():
    SlowExchange.made.clear()
    site = StreamingSite(SlowExchange)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        size = BODY_MIB * 1024 * 1024
        head = (f"PUT /bucket/key?x=1 HTTP/1.1\r\nHost: s3\r\nX-Test: yes\r\nConnection: close\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()
        answer = await deferToThread(_send, port.getHost().port, head, BODY_MIB)
    finally:
        await port.stopListening()
    expected = hashlib.md5(bytes(range(256)) * 4096 * BODY_MIB).hexdigest().encode()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(expected)
    exchange, = SlowExchange.made
    # The exchange started at the headers, before any body byte was passed on.
    assert exchange.headers_seen_at_start == (b"PUT", b"/bucket/key", b"yes")
    assert exchange.pump.bytes == size
    assert exchange.buffered == 0  # twisted.web's own body buffer stayed empty
    # Never more than a few socket reads held, however large the body.
    assert exchange.max_held < 2 * 1024 * 1024, exchange.max_held


@pytest_twisted.ensureDeferred
async def test_two_requests_on_one_connection():
    SlowExchange.made.clear()
    site = StreamingSite(SlowExchange)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    def two() -> bytes:
        with socket.create_connection(("127.0.0.1", port.getHost().port)) as s:
            s.sendall(b"PUT /b/one HTTP/1.1\r\nHost: s3\r\nContent-Length: 3\r\n\r\nabc"
                      b"GET /b/two HTTP/1.1\r\nHost: s3\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer

    try:
        answer = await deferToThread(two)
    finally:
        await port.stopListening()
    assert answer.count(b"HTTP/1.1 200") == 2
    assert hashlib.md5(b"abc").hexdigest().encode() in answer and hashlib.md5(b"").hexdigest().encode() in answer
    assert [e.headers_seen_at_start[1] for e in SlowExchange.made] == [b"/b/one", b"/b/two"]
