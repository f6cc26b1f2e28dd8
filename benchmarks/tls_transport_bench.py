"""What each TLS transport costs under Twisted: plain TCP, Twisted's TLS, and storg's (tls_stream).

Two Twisted protocols joined over loopback TCP in one process, three ways:

* ``tcp``: no TLS;
* ``twisted``: Twisted's ``TLSMemoryBIOProtocol`` on pyOpenSSL (``listenSSL``
  and ``connectSSL``), what storg ran on before;
* ``storg``: :mod:`storg.net.tls_stream` on the standard library's ``ssl``,
  with storg's own certificates and contexts (mutual TLS, as the nodes run).

Two figures each, as CPU time of the process (both ends):

* microseconds per round trip of a 300-byte message (an int32-framed
  request echoed back: a small request and its reply);
* milliseconds per MiB streamed one way in 1 MiB writes (a chunk).

Each measurement runs in a fresh process (a reactor runs once), in
interleaved rounds (tcp, twisted, storg, tcp, ...), and the ratios to plain
TCP are taken within a round::

    .venv/bin/python benchmarks/tls_transport_bench.py [--rounds 5] [--trips 20000] [--mib 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("tcp", "twisted", "storg")
MESSAGE = os.urandom(300)


def child(mode: str, what: str, count: int, certs: Path) -> None:
    """One measurement in this process: prints one number (µs per trip, or ms per MiB)."""
    from twisted.internet import protocol, reactor
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.protocols.basic import Int32StringReceiver
    from zope.interface import implementer

    result: list[float] = []

    class Echo(Int32StringReceiver):
        MAX_LENGTH = 1 << 24

        def stringReceived(self, data: bytes) -> None:
            self.sendString(data)

    class Pinger(Int32StringReceiver):
        MAX_LENGTH = 1 << 24
        warm = 200

        def connectionMade(self) -> None:
            self.seen = 0
            self.sendString(MESSAGE)

        def stringReceived(self, data: bytes) -> None:
            self.seen += 1
            if self.seen == self.warm:
                self.started = time.process_time()
            if self.seen == self.warm + count:
                result.append((time.process_time() - self.started) * 1e6 / count)
                reactor.stop()
                return
            self.sendString(MESSAGE)

    chunk = os.urandom(1 << 20)

    class Sink(protocol.Protocol):
        def connectionMade(self) -> None:
            self.got = 0
            self.started = time.process_time()

        def dataReceived(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= count << 20:
                result.append((time.process_time() - self.started) * 1000 / count)
                reactor.stop()

    @implementer(IHandshakeListener)
    class Source(protocol.Protocol):
        """Streams ``count`` MiB once the connection is ready (after the handshake with TLS)."""

        def connectionMade(self) -> None:
            self.left = count
            if mode == "tcp":
                self.handshakeCompleted()

        def handshakeCompleted(self) -> None:
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            while self.left and not self.paused:
                self.left -= 1
                self.transport.write(chunk)
            if not self.left:
                self.transport.unregisterProducer()

        def stopProducing(self) -> None:
            self.left = 0

    server_side, client_side = (Echo, Pinger) if what == "trips" else (Sink, Source)
    server = protocol.Factory.forProtocol(server_side)
    client = protocol.ClientFactory.forProtocol(client_side)
    ca, node_cert, node_key = (str(certs / name) for name in ("ca.pem", "n1.pem", "n1-key.pem"))
    if mode == "tcp":
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port, client)
    elif mode == "twisted":
        from twisted.internet import ssl

        def pem(name: str) -> str:
            return (certs / name).read_text()

        mine = ssl.PrivateCertificate.loadPEM(pem("n1.pem") + pem("n1-key.pem"))
        authority = ssl.Certificate.loadPEM(pem("ca.pem"))
        port = reactor.listenSSL(0, server, mine.options(authority), interface="127.0.0.1")
        reactor.connectSSL("127.0.0.1", port.getHost().port, client, mine.options(authority))
    else:
        from storg.net.tls import client_options, server_options
        from storg.net.tls_stream import TLSStreamFactory

        port = reactor.listenTCP(0, TLSStreamFactory(server_options(ca, node_cert, node_key), server),
                                 interface="127.0.0.1")
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           TLSStreamFactory(client_options(ca, node_cert, node_key, "n1"), client))
    reactor.callLater(120, reactor.stop)
    reactor.run()
    print(result[0] if result else "nan")


def measure(mode: str, what: str, count: int, certs: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", mode, what, str(count), str(certs)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def make_certs(folder: Path) -> None:
    from storg.net.certs import issue, make_ca, write_file
    from storg.net.identity import Identity

    ca = make_ca()
    node = issue(ca, Identity.node("n1"))
    write_file(str(folder / "ca.pem"), ca.cert_pem(), 0o644)
    write_file(str(folder / "n1.pem"), node.cert_pem(), 0o644)
    write_file(str(folder / "n1-key.pem"), node.key_pem(), 0o600)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trips", type=int, default=20000, help="round trips per measurement")
    parser.add_argument("--mib", type=int, default=128, help="MiB streamed per measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import cpu_flags, sha256_mbs

    print(f"host: {cpu_flags()}; SHA-256 {sha256_mbs():.0f} MB/s on one core")
    with tempfile.TemporaryDirectory(prefix="storg-tls-transport-") as tmp:
        certs = Path(tmp)
        make_certs(certs)
        figures: dict[tuple[str, str], list[float]] = {(m, w): [] for m in MODES for w in ("trips", "stream")}
        for r in range(args.rounds):
            for what, count in (("trips", args.trips), ("stream", args.mib)):
                for mode in MODES:
                    figures[(mode, what)].append(measure(mode, what, count, certs))
            print(f"round {r + 1}: " + "; ".join(
                f"{what} " + " ".join(f"{mode} {figures[(mode, what)][-1]:.1f}" for mode in MODES)
                for what in ("trips", "stream")))
    for what, unit in (("trips", "µs CPU per 300-byte round trip"), ("stream", "ms CPU per MiB streamed")):
        print(f"{unit}, median of {args.rounds} rounds, and the TLS cost over TCP (per-round differences):")
        tcp = figures[("tcp", what)]
        for mode in MODES:
            own = figures[(mode, what)]
            extra = statistics.median(a - b for a, b in zip(own, tcp, strict=True))
            print(f"  {mode:>8}: {statistics.median(own):8.1f}   TLS's own cost {extra:+8.1f}")
        storg_extra = [s - t for s, t in zip(figures[("storg", what)], tcp, strict=True)]
        twisted_extra = [w - t for w, t in zip(figures[("twisted", what)], tcp, strict=True)]
        ratios = [s / w for s, w in zip(storg_extra, twisted_extra, strict=True) if w > 0]
        if ratios:
            print(f"  storg's TLS cost / Twisted's, per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
