"""TLS under a Twisted protocol, on the standard library's ``ssl.SSLObject`` and two memory BIOs.

Why not Twisted's ``TLSMemoryBIOProtocol``
-------------------------------------------

Twisted's TLS drives pyOpenSSL's memory BIOs from Python: every message
crosses cffi several times, each read ends in a ``WantReadError`` raised
and caught (three exceptions per message), and every write is copied into
an aggregation buffer flushed by a ``callLater(0)`` on the next reactor
turn.  Measured over loopback, both ends in one process
(``benchmarks/tls_transport_bench.py``, docs/benchmarks.rst row P): a
300-byte round trip cost TLS about 100 µs of CPU over plain TCP's with
Twisted's, about 38 µs with this module; a MiB streamed, 3.4 ms against
2.1.  storg's small requests are a few such messages each, so TLS cost
them 20-50% of their throughput with Twisted's.

The standard library's ``ssl`` module runs the same OpenSSL with the
memory BIOs in C: :class:`TLSStream` writes a message straight through
(``SSLObject.write`` then one ``MemoryBIO.read`` into the TCP transport),
and reads until the incoming BIO is empty, asking OpenSSL only when there
is something to ask (``MemoryBIO.pending``), so no exception is raised on
the common path.

What it keeps of Twisted's TLS
------------------------------

It is a :class:`~twisted.protocols.policies.ProtocolWrapper`, like
``TLSMemoryBIOProtocol``: the wrapped protocol's ``connectionMade`` comes
at TCP connect, before the handshake; its ``handshakeCompleted`` (if it
provides ``IHandshakeListener``) once the peer's certificate is verified
and its identity accepted; writes made before that are held and sent
after it, and a ``loseConnection`` made before it waits for it (a refusal
written at connect reaches the client).  ``registerProducer`` goes
straight to the TCP transport: after the handshake nothing is buffered
here, so the TCP buffer is what pauses a producer, as without TLS.

Refusals
--------

The chain is verified by OpenSSL during the handshake (an alert goes to
the peer: unknown CA, expired, certificate required, ...).  The storg
identity in a verified certificate is checked right after it
(:meth:`TLSOptions.check_peer`); a refused identity ends the connection
(a TCP close, no alert: the standard library cannot send one) before a
byte reaches the wrapped protocol.  Either
way :attr:`TLSStream.refusal` says why in one line, for
:func:`storg.net.tls.describe_tls_failure`.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol, cast

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from storg.net.identity import VERIFY_ERRORS, Identity, IdentityError, identity_of_peercert

__all__ = ["PeerRefusedError", "TLSOptions", "TLSStream", "TLSStreamFactory", "tls_error_text"]

READ_SIZE = 16 * 1024
"""What one ``SSLObject.read`` asks for: one TLS record's most (OpenSSL returns one record per
call).  The standard library allocates the whole size before each read and shrinks it after,
so asking for more costs an allocation (past 128 KiB, an mmap) per 16 KiB record."""

CLOSE_GRACE = 10.0
"""Seconds a close asked for before the handshake waits for it (to send what was written) before
the connection is dropped: a peer that accepted TCP but never answers TLS must not hold it."""

JOIN_BELOW = 64 * 1024
"""``writeSequence`` joins pieces smaller than this into one write (one TLS record for a small
frame's header and body); larger ones are written piece by piece, not copied into one."""


class TLSOptions(Protocol):
    """What :class:`TLSStream` needs of a side's TLS configuration (:mod:`storg.net.tls` has both)."""

    context: ssl.SSLContext
    server_side: bool

    def check_peer(self, identity: Identity | None) -> str | None:
        """Why the verified peer is refused (None: accepted); None for a peer that showed no certificate."""


class PeerRefusedError(ssl.SSLError):
    """The peer's certificate was verified but its storg identity refused by this end."""


def tls_error_text(error: BaseException) -> str:
    """OpenSSL's reason in words: ``tlsv13 alert certificate required``, ``unknown ca``, ..."""
    if isinstance(error, ssl.SSLCertVerificationError):
        why = VERIFY_ERRORS.get(error.verify_code)
        if why:
            return why
    reason = getattr(error, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return " ".join(str(error).split()) or type(error).__name__


class TLSStream(ProtocolWrapper):
    """One TLS connection: a ``ssl.SSLObject`` between the TCP transport and the wrapped protocol."""

    def __init__(self, factory: TLSStreamFactory, wrappedProtocol: Any) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self._options = factory.options
        self._tcp: Any = None  # the TCP transport under us (``self.transport``, typed for use)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = factory.options.context.wrap_bio(
            self._incoming, self._outgoing, server_side=factory.options.server_side)
        self._handshaken = False
        self._finished = False  # TLS is over: failed, refused, or shut down by either end
        self._early: list[bytes] = []  # written by the wrapped protocol before the handshake
        self._close_after_handshake = False
        self._close_timer: Any = None
        self._peer_closed_tls = False  # the peer's close_notify came: TCP's end is a clean one
        self._we_closed = False  # our close_notify went, or we ended the connection
        self._failure: Failure | None = None
        self.refusal: str | None = None
        """Why this end refused the peer's certificate, in one line; None if it did not."""
        self.tls_identity: Identity | None = None
        """The peer's verified identity, from the handshake on (None without a certificate)."""

    # -- Twisted: the TCP side -------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper's, but this transport is an ISSLTransport from the start: the wrapped
        # protocol's connectionMade (before the handshake) may ask.
        directlyProvides(self, providedBy(transport), ISSLTransport)
        self._tcp = transport
        TwistedProtocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        cast(Any, self.wrappedProtocol).makeConnection(self)
        if not self._options.server_side and not self._finished:
            self._handshake()  # the ClientHello

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        self._incoming.write(data)
        if not self._handshaken:
            self._handshake()
            if not self._handshaken or self._finished:
                return
        self._deliver()

    def connectionLost(self, reason: Any = None) -> None:
        self._finished = True
        self._early.clear()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self._failure is not None:
            reason = self._failure
        elif self._handshaken and not self._peer_closed_tls and not self._we_closed:
            # TCP ended without the peer's close_notify: the stream may have been cut short
            # (as Twisted's TLS reports it), not ended.
            reason = Failure(ConnectionLost("the TLS stream ended without close_notify"))
        ProtocolWrapper.connectionLost(self, reason)

    # -- Twisted: the wrapped protocol's transport ------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._finished or self.disconnecting:
            return
        if not self._handshaken:
            self._early.append(bytes(data))
            return
        self._encrypt(data)
        self._flush()

    def writeSequence(self, data: Any) -> None:
        if self._finished or self.disconnecting:
            return
        pieces = list(data)
        if sum(len(piece) for piece in pieces) < JOIN_BELOW:
            self.write(b"".join(pieces))
            return
        if not self._handshaken:
            self._early.extend(bytes(piece) for piece in pieces)
            return
        for piece in pieces:
            self._encrypt(piece)
        self._flush()

    def loseConnection(self) -> None:
        if self.disconnecting or self._finished:
            return
        self.disconnecting = True
        if not self._handshaken and self._early:
            self._close_after_handshake = True  # what was written goes out first, if it can
            self._close_timer = self.factory.reactor.callLater(CLOSE_GRACE, self.abortConnection)
            return
        self._shutdown()

    def abortConnection(self) -> None:
        self._we_closed = True
        self._finished = True
        self.disconnecting = True
        self._tcp.abortConnection()

    def getPeerCertificate(self) -> bytes | None:
        """The peer's certificate (DER), once the handshake is done; None before or without one."""
        if not self._handshaken:
            return None
        return self._tls.getpeercert(binary_form=True)

    def tls_version(self) -> str | None:
        """The protocol version negotiated (``TLSv1.3``), once the handshake is done."""
        return self._tls.version() if self._handshaken else None

    # -- the TLS machinery ----------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLCertVerificationError as exc:
            self.refusal = f"certificate refused: {tls_error_text(exc)}"
            self._fail(Failure())
            return
        except ssl.SSLError:
            self._fail(Failure())
            return
        self._flush()
        refusal = self._check_identity()
        if refusal is not None:
            self.refusal = refusal
            self._fail(Failure(PeerRefusedError(refusal)))
            return
        self._handshaken = True
        early, self._early = self._early, []
        for data in early:  # each flushed at once: the outgoing BIO never holds them all
            self._encrypt(data)
            self._flush()
        if self._finished:  # an encryption failed: _fail closed the connection
            return
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        if self._close_after_handshake:
            self._shutdown()
        elif self._incoming.pending and not self._finished:
            self._deliver()  # application data that came with the handshake's last flight

    def _check_identity(self) -> str | None:
        cert = self._tls.getpeercert()
        identity = None
        if cert:
            try:
                identity = identity_of_peercert(cert)
            except IdentityError as exc:
                return f"certificate refused: {exc}"
        refusal = self._options.check_peer(identity)
        if refusal is not None:
            if identity is None:
                return f"no certificate: {refusal}"
            return f"certificate of {identity} refused: {refusal}"
        self.tls_identity = identity
        return None

    def _deliver(self) -> None:
        """Decrypt what the incoming BIO holds and hand it to the wrapped protocol in one call."""
        tls, incoming = self._tls, self._incoming
        pieces: list[bytes] = []
        while True:
            try:
                piece = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self._give(pieces)
                self._peer_closed()
                return
            except ssl.SSLError:
                self._give(pieces)
                self._fail(Failure())
                return
            if not piece:  # SSLObject.read gives b"" for the peer's close_notify
                self._give(pieces)
                self._peer_closed()
                return
            pieces.append(piece)
            if not incoming.pending and not tls.pending():
                break
        self._give(pieces)
        if self._outgoing.pending and not self._finished:
            self._flush()  # a key update's answer, say

    def _give(self, pieces: list[bytes]) -> None:
        if not pieces or self._finished:
            return
        ProtocolWrapper.dataReceived(self, pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _encrypt(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = self._tls.write(view)
                view = view[written:]
        except ssl.SSLError:
            self._fail(Failure())

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._tcp.write(self._outgoing.read())

    def _shutdown(self) -> None:
        """Our close_notify, then close TCP once its buffer is written (we do not wait for theirs)."""
        self._we_closed = True
        self._finished = True
        self.disconnecting = True
        if self._handshaken:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: the peer's close_notify has not come; it need not
            self._flush()
        self._tcp.loseConnection()

    def _peer_closed(self) -> None:
        self._peer_closed_tls = True
        if self._finished:
            return
        self.disconnecting = True
        self._shutdown()

    def _fail(self, failure: Failure) -> None:
        """TLS cannot go on: send the alert OpenSSL made, close, and report ``failure``."""
        if self._failure is None:
            self._failure = failure
        self._we_closed = True
        self._finished = True
        self.disconnecting = True
        self._early.clear()
        self._flush()
        self._tcp.loseConnection()


class TLSStreamFactory(WrappingFactory):
    """Wraps every protocol ``wrappedFactory`` builds in a :class:`TLSStream` with ``options``."""

    protocol = TLSStream
    noisy = False

    def __init__(self, options: TLSOptions, wrappedFactory: Any, reactor: Any = None) -> None:
        super().__init__(wrappedFactory)
        self.options = options
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor: Any = reactor
        """Times the grace of a close asked before the handshake (``CLOSE_GRACE``)."""

    def logPrefix(self) -> str:
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        return f"{inner() if inner is not None else type(self.wrappedFactory).__name__} (TLS)"
