"""Hostile input to a live cluster: no node crashes, and the cluster keeps serving.

A hypothesis fuzzer opens connections to the client and peer ports of three
real nodes and sends random bytes, truncated frames, oversized length
prefixes, and valid frames in the wrong place or order: PutData without
PutStart, replies (GetEnd, PutDone, ...) sent by a "client", Raft messages
to the client port, file frames to the peer port before and after a Hello,
Hellos from strangers.  README.rst, "Guarantees": such a connection is closed with one
log line and everyone else is served.  After every example all nodes must be
alive; at the end a put/get round trip must still work.
"""

from __future__ import annotations

import hashlib
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storg.config import cluster_id, load_config
from storg.raft.types import Entry, Message, MessageType
from storg.testing.devcluster import ProcCluster, loopback_hosts, wait_for
from storg.wire import CODEC, MAX_FRAME_BYTES, CodecError, Hello, StatusRequest
from storg.wire.chunks import ChunkData, ChunkGet, ChunkPut, ChunkStored
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

pytestmark = pytest.mark.process
"""Every test here starts real node processes (the quick loop skips them: -m "not process")."""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    # Plain TCP on loopback, on purpose: the fuzzer's frames must reach the frame parser and
    # the codec, which a TLS listener would hide behind the handshake (anyone with a certificate
    # reaches them too).  tests/process/test_tls_processes.py sends strangers to TLS listeners.
    c = ProcCluster.create(root, size=3, hosts=loopback_hosts(3), files={"chunk_size": 64 * 1024}, tls=False)
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        cid = cluster_id(load_config(str(c.nodes["n1"].config_path)))
        yield c, cid
    finally:
        c.close()


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


SHA = hashlib.sha256(b"x").hexdigest()
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
# Mostly a few small request ids, so that frames of one "upload" refer to each other.
ids = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1))
small = st.binary(max_size=64)
text = st.text(max_size=40)
info = st.builds(FileInfo, st.just("/f"), st.integers(0, 2**40), st.just(SHA), ids, ids,
                 st.lists(st.builds(ChunkRef, st.just(SHA), st.integers(0, 2**32 - 1),
                                    st.lists(st.sampled_from(["n1", "n2", "zz"]), max_size=3)
                                    .map(tuple)), max_size=3).map(tuple))
paths = st.sampled_from(["/f", "/fuzz/a", "a//b", "/..", "/" + "x" * 1100, ""])

# Requests a client may send, but here alone, twice, or out of order.
client_frames = st.one_of(
    st.builds(PutStart, ids, paths, ids, ids),
    st.builds(PutData, ids, small),
    st.builds(PutEnd, ids, st.integers(0, 2**63) | st.just(0), st.sampled_from([SHA, EMPTY_SHA])),
    st.builds(GetRequest, ids, paths, st.booleans()),
    st.builds(LsRequest, ids, paths, st.booleans()),
    st.builds(StatRequest, ids, paths, st.booleans()),
    st.builds(RmRequest, ids, paths, ids, ids),
    st.builds(ChunkPut, ids, st.just(SHA), small),
    st.builds(ChunkGet, ids, st.just(SHA)),
    st.builds(StatusRequest, ids),
)
# Frames only a server sends: a client must never send them.
server_frames = st.one_of(
    st.builds(PutReady, ids, st.integers(0, 2**32 - 1)),
    st.builds(PutDone, ids, info),
    st.builds(GetStart, ids, info),
    st.builds(GetData, ids, small),
    st.builds(GetEnd, ids),
    st.builds(LsReply, ids, st.lists(info, max_size=2).map(tuple), st.booleans()),
    st.builds(StatReply, ids, info),
    st.builds(RmDone, ids, ids),
    st.builds(ChunkStored, ids, st.just(SHA)),
    st.builds(ChunkData, ids, st.just(SHA), small),
)
raft_frames = st.builds(
    Message, st.sampled_from(list(MessageType)), st.sampled_from(["n1", "n2", "n3", "x"]),
    st.sampled_from(["n1", "n2", "n3", "x"]), st.integers(0, 2**40), st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.lists(st.builds(Entry, st.integers(0, 99), st.integers(0, 99), data=small), max_size=2).map(tuple),
    st.integers(0, 2**40))


def _encode(obj) -> bytes:
    try:
        return CODEC.encode(obj)
    except (CodecError, ValueError, OverflowError, struct.error):
        # A value the codec refuses to encode: send its junk cousin instead.
        return b"\xff" + repr(obj).encode()[:200]


encoded = st.one_of(client_frames, server_frames, raft_frames).map(_encode)

# One chunk of what goes on the wire.
pieces = st.one_of(
    encoded.map(frame),                                          # a valid frame
    encoded.map(lambda b: frame(b)[: max(1, len(b) // 2)]),      # a truncated one
    st.binary(min_size=1, max_size=200).map(frame),              # framed garbage
    st.binary(min_size=1, max_size=200),                         # unframed garbage
    st.sampled_from([MAX_FRAME_BYTES + 1, 0xFFFFFFFF, 2**31]).map(lambda n: struct.pack(">I", n) + b"xx"),
    st.just(frame(b"")),                                         # an empty frame
)


def hello_for(cid: str):
    return st.one_of(
        st.builds(Hello, st.just(1), st.just(cid), st.sampled_from(["n1", "n2", "n3"]),
                  st.text("0123456789abcdef", min_size=32, max_size=32)),  # a member with another instance
        st.builds(Hello, st.just(1), st.just(cid), st.sampled_from(["stranger", ""]), st.just("0" * 32)),
        st.builds(Hello, st.just(1), st.text("0123456789abcdef", min_size=32, max_size=32),
                  st.just("n2"), st.just("1" * 32)),                           # another cluster
        st.builds(Hello, st.integers(0, 65535), st.just(cid), st.just("n2"), st.just("2" * 32)),
    ).map(lambda h: frame(_encode(h)))


def send(host: str, port: int, payload: bytes) -> None:
    """Send, half-close, and read until the node closes (or stops talking)."""
    with socket.create_connection((host, port), timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(3)
            while s.recv(65536):
                pass
        except OSError:
            pass  # reset by the node: that is a refusal too


def all_alive(cluster: ProcCluster) -> None:
    dead = [n for n, node in cluster.nodes.items() if not node.alive()]
    assert not dead, f"nodes crashed: {dead}: " + cluster.log_text(dead[0])[-3000:]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_client_and_peer_ports_survive_hostile_input(live, data):
    cluster, cid = live
    node = cluster.nodes[data.draw(st.sampled_from(sorted(cluster.nodes)), label="node")]
    target = data.draw(st.sampled_from(["client", "peer", "peer-after-hello"]), label="port")
    chunks = data.draw(st.lists(pieces, min_size=1, max_size=6), label="pieces")
    payload = b"".join(chunks)
    if target == "client":
        send(node.host, node.client_port, payload)
    elif target == "peer":
        send(node.host, node.peer_port, payload)
    else:
        send(node.host, node.peer_port, data.draw(hello_for(cid), label="hello") + payload)
    all_alive(cluster)


def test_the_cluster_still_serves_after_the_fuzzing(live):
    cluster, _ = live
    data = b"still serving\n" * 1000
    out = cluster.storgctl("--timeout", "30", "put", "-", "/after-fuzz", input=data)
    assert out.returncode == 0, out.stderr
    for nid in cluster.nodes:
        out = cluster.storgctl("--timeout", "30", "get", "/after-fuzz", "-", nodes=[nid])
        assert out.returncode == 0 and out.stdout == data, out.stderr
    all_alive(cluster)
    assert wait_for(cluster.leader, 30, "a leader after the fuzzing")
