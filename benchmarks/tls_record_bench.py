"""What TLS itself costs under storg's transport, without Twisted or storg around it.

Two pyOpenSSL connections joined by their memory BIOs (as Twisted's
``TLSMemoryBIOProtocol`` drives them), TLS 1.3 with storg's own
certificates' key type (EC P-256), in one process: CPU milliseconds per MiB
for one hop (encrypt, move the records, decrypt), three ways, interleaved
round by round (A B C A B C ...):

* ``records``: as Twisted writes and reads: 16 KiB slices, a ``bio_read``
  of 32 KiB and a ``recv`` of 32 KiB until ``WantReadError``;
* ``whole``: a 1 MiB chunk handed over in one ``send``, read out in 1 MiB
  pieces, received with ``recv_into`` into one reused buffer;
* ``small``: microseconds per 300-byte message (a request or a reply).

This is the floor any design on pyOpenSSL's memory BIOs pays per hop; the
rest of row J's TLS cost (docs/benchmarks.rst) is what Twisted and storg do
around it::

    .venv/bin/python benchmarks/tls_record_bench.py [--rounds 5] [--mib 128]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from benchlib import cpu_flags, sha256_mbs


def connected_pair() -> tuple[SSL.Connection, SSL.Connection]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    server_ctx.use_certificate(crypto.X509.from_cryptography(cert))
    server_ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        _pump(client, server)
    return client, server


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                dst.bio_write(src.bio_read(1 << 20))
                moved = True
            except SSL.WantReadError:
                pass


def records(client: SSL.Connection, server: SSL.Connection, chunk: bytes, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        sent = 0
        wire = []
        while sent < len(chunk):
            sent += client.send(chunk[sent:sent + 16384])
            while True:
                try:
                    wire.append(client.bio_read(2 ** 15))
                except SSL.WantReadError:
                    break
        got = 0
        for piece in wire:
            server.bio_write(piece)
            while True:
                try:
                    got += len(server.recv(2 ** 15))
                except SSL.WantReadError:
                    break
        assert got == len(chunk)
    return (time.process_time() - t) / n * 1e3


def whole(client: SSL.Connection, server: SSL.Connection, chunk: bytes, n: int) -> float:
    buffer = bytearray(len(chunk) + (1 << 16))
    view = memoryview(buffer)
    source = memoryview(chunk)
    t = time.process_time()
    for _ in range(n):
        sent = 0
        while sent < len(chunk):
            sent += client.send(source[sent:])
        while True:
            try:
                server.bio_write(client.bio_read(1 << 21))
            except SSL.WantReadError:
                break
        pos = 0
        while True:
            try:
                pos += server.recv_into(view[pos:], len(buffer) - pos)
            except SSL.WantReadError:
                break
        assert pos == len(chunk)
    return (time.process_time() - t) / n * 1e3


def small(client: SSL.Connection, server: SSL.Connection, n: int) -> float:
    message = os.urandom(300)
    t = time.process_time()
    for _ in range(n):
        client.send(message)
        while True:
            try:
                server.bio_write(client.bio_read(2 ** 15))
            except SSL.WantReadError:
                break
        while True:
            try:
                server.recv(2 ** 15)
            except SSL.WantReadError:
                break
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mib", type=int, default=128, help="MiB through each bulk way per round")
    args = p.parse_args()
    print(f"host: {cpu_flags()}; SHA-256 {sha256_mbs():.0f} MB/s on one core")
    print(f"OpenSSL: {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}")
    client, server = connected_pair()
    print(f"cipher: {client.get_cipher_name()} ({client.get_protocol_version_name()})")
    chunk = os.urandom(1 << 20)
    rows: dict[str, list[float]] = {"records": [], "whole": [], "small": []}
    for r in range(args.rounds):
        rows["records"].append(records(client, server, chunk, args.mib))
        rows["whole"].append(whole(client, server, chunk, args.mib))
        rows["small"].append(small(client, server, 20_000))
        print(f"round {r + 1}: records {rows['records'][-1]:.2f} ms/MiB, whole {rows['whole'][-1]:.2f} ms/MiB "
              f"(ratio {rows['whole'][-1] / rows['records'][-1]:.2f}), small {rows['small'][-1]:.1f} us/message")
    med = statistics.median
    ratios = [w / r for w, r in zip(rows["whole"], rows["records"], strict=True)]
    print(f"median: records {med(rows['records']):.2f} ms/MiB ({med(rows['records']) * 1.024:.2f} CPU-s per GiB "
          f"per hop), whole {med(rows['whole']):.2f} ms/MiB, whole/records {med(ratios):.2f}, "
          f"small {med(rows['small']):.1f} us per message per hop")


if __name__ == "__main__":
    main()
