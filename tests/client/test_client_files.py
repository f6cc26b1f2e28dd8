"""The client library's file operations against fake nodes on loopback TCP."""

from __future__ import annotations

import hashlib
import inspect
import io
import os

import pytest
import pytest_twisted
from fake_node import FakeNode
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater

from storg.client.api import StorgClient
from storg.client.blocking import BlockingClient, run_now
from storg.client.errors import (
    BadRequest,
    ClusterUnavailable,
    DiskFull,
    IntegrityError,
    LocalError,
    NotFoundError,
)
from storg.paths import InvalidPath


async def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


@pytest_twisted.async_yield_fixture
async def nodes():
    made: list[FakeNode] = []

    def make(**kwargs) -> FakeNode:
        node = FakeNode(**kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


class ThreadedBlockingClient:
    """The blocking driver (storgctl's) under these tests: each call runs in a thread of its own
    while the reactor serves the fake nodes.  Attributes are the BlockingClient's."""

    def __init__(self, addresses, timeout: float) -> None:
        self.client = BlockingClient(list(addresses), timeout=timeout)

    def __getattr__(self, name):
        value = getattr(self.client, name)
        if not inspect.iscoroutinefunction(value):
            return value

        def call(*args, **kwargs):
            return threads.deferToThread(run_now, value(*args, **kwargs))
        return call

    def close(self) -> None:
        self.client.close()


async def _clients(driver: str):
    made: list = []

    def make(addresses, timeout: float = 5.0):
        if driver == "twisted":
            client = StorgClient(list(addresses), reactor=reactor, timeout=timeout)
        else:
            client = ThreadedBlockingClient(addresses, timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest_twisted.async_yield_fixture(params=["twisted", "blocking"])
async def clients(request):
    """Both drivers of the client protocol: the behaviour of a file operation is the protocol's."""
    async for make in _clients(request.param):
        yield make


@pytest_twisted.async_yield_fixture
async def twisted_clients():
    """The Twisted driver alone, for tests of what only it has (its connections' transports)."""
    async for make in _clients("twisted"):
        yield make


class OneWayStream(io.RawIOBase):
    """A pipe-like source: not seekable, ``reads`` counts the bytes handed out."""

    def __init__(self, total: int, pattern: bytes = b"storg-") -> None:
        self.total = total
        self.pattern = pattern
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf) -> int:
        n = min(len(buf), self.total - self.reads)
        block = (self.pattern * (n // len(self.pattern) + 2))
        start = self.reads % len(self.pattern)
        buf[:n] = block[start:start + n]
        self.reads += n
        return n

    def content(self) -> bytes:
        return (self.pattern * (self.total // len(self.pattern) + 1))[:self.total]


class OneWaySink(io.BytesIO):
    """Like stdout on a pipe: what is written cannot be taken back."""

    def seekable(self) -> bool:
        return False


def write_file(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- put ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_put_streams_frames_no_larger_than_max_frame_and_returns_info(nodes, clients, tmp_path):
    node = nodes(max_frame=4096)
    data = os.urandom(4096 * 5 + 17)
    client = clients([node.address])
    seen = []
    info = await client.put(write_file(tmp_path, "f", data), "a/b", progress=lambda d, t: seen.append((d, t)))
    assert info.path == "/a/b" and info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert node.files["/a/b"][1] == data
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))


@pytest_twisted.ensureDeferred
async def test_put_of_an_empty_file(nodes, clients, tmp_path):
    node = nodes()
    info = await clients([node.address]).put(write_file(tmp_path, "e", b""), "/empty")
    assert info.size == 0 and info.sha256 == hashlib.sha256(b"").hexdigest()


@pytest_twisted.ensureDeferred
async def test_put_follows_not_leader_to_the_leader(nodes, clients, tmp_path):
    leader = nodes()
    follower = nodes()
    follower.redirect_to = leader.address
    client = clients([follower.address, leader.address])
    await client.put(write_file(tmp_path, "f", b"hello"), "/x")
    assert leader.files["/x"][1] == b"hello"
    assert [s.path for s in follower.put_starts] == ["/x"]
    assert client._leader_guess == leader.address
    # The next write goes straight to the leader.
    await client.rm("/x")
    assert not [r for r in follower.requests if type(r).__name__ == "RmRequest"]


@pytest_twisted.ensureDeferred
async def test_put_retried_after_a_dropped_connection_reuses_client_id_and_seq(nodes, clients, tmp_path):
    node = nodes(max_frame=8192)
    node.drop_put_after = 20000
    data = os.urandom(100_000)
    client = clients([node.address])
    info = await client.put(write_file(tmp_path, "f", data), "/big")
    starts = node.put_starts
    assert len(starts) == 2
    assert (starts[0].client_id, starts[0].seq) == (starts[1].client_id, starts[1].seq)
    assert starts[0].client_id == client.client_id != 0
    assert node.files["/big"][1] == data and info.size == len(data)
    # A later put is a new operation: a new seq.
    await client.put(write_file(tmp_path, "g", b"x"), "/small")
    assert node.put_starts[-1].seq > starts[0].seq


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_use_sessions_of_their_own(nodes, twisted_clients, tmp_path):
    clients = twisted_clients  # concurrency is the Twisted driver's (storgctl makes one request)
    node = nodes(max_frame=4096)
    client = clients([node.address])
    sources = [write_file(tmp_path, f"f{i}", os.urandom(20_000)) for i in range(4)]
    await defer.gatherResults([
        defer.Deferred.fromCoroutine(client.put(src, f"/c/{i}")) for i, src in enumerate(sources)])
    sessions = {(s.client_id, s.seq) for s in node.put_starts}
    assert len({cid for cid, _ in sessions}) == 4 and all(seq == 1 for _, seq in sessions)
    # Sequential writes afterwards reuse a session, seq growing.
    await client.rm("/c/0")
    await client.rm("/c/1")
    rms = [r for r in node.requests if type(r).__name__ == "RmRequest"]
    assert rms[0].client_id == rms[1].client_id and rms[1].seq == rms[0].seq + 1


@pytest_twisted.ensureDeferred
async def test_put_whose_reply_was_lost_is_applied_once(nodes, clients, tmp_path):
    node = nodes()
    node.drop_after_commit = True
    client = clients([node.address])
    info = await client.put(write_file(tmp_path, "f", b"once"), "/once")
    assert len(node.put_starts) == 2
    assert info.version == node.version == 1


@pytest_twisted.ensureDeferred
async def test_leadership_lost_mid_upload_sends_it_again_to_the_new_leader(nodes, clients, tmp_path):
    old = nodes(max_frame=4096)
    new = nodes(max_frame=4096)
    old.not_leader_after = 10_000
    old.redirect_hint = new.address
    data = os.urandom(50_000)
    client = clients([old.address, new.address])
    info = await client.put(write_file(tmp_path, "f", data), "/moved")
    assert new.files["/moved"][1] == data and info.size == len(data)
    assert (old.put_starts[0].client_id, old.put_starts[0].seq) == (
        new.put_starts[0].client_id, new.put_starts[0].seq)
    assert "/moved" not in old.files


@pytest_twisted.ensureDeferred
async def test_a_put_never_answered_is_cluster_unavailable_after_the_timeout(nodes, clients, tmp_path):
    node = nodes()
    node.ignore_put_end = True
    client = clients([node.address], timeout=0.5)
    started = reactor.seconds()
    with pytest.raises(ClusterUnavailable):
        await client.put(write_file(tmp_path, "f", b"abc"), "/x")
    assert 0.4 < reactor.seconds() - started < 5.0


@pytest_twisted.ensureDeferred
async def test_nodes_redirecting_to_each_other_do_not_spin(nodes, clients, tmp_path):
    a = nodes()
    b = nodes()
    a.redirect_to, b.redirect_to = b.address, a.address
    with pytest.raises(ClusterUnavailable):
        await clients([a.address, b.address], timeout=0.5).rm("/x")
    assert len(a.requests) + len(b.requests) < 100


@pytest_twisted.ensureDeferred
async def test_put_from_a_stream_that_cannot_seek(nodes, clients):
    node = nodes(max_frame=4096)
    source = OneWayStream(50_000)
    info = await clients([node.address]).put(io.BufferedReader(source), "/piped")
    assert node.files["/piped"][1] == source.content()
    assert info.sha256 == hashlib.sha256(source.content()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_interrupted_put_from_a_stream_is_cluster_unavailable_at_once(nodes, clients):
    node = nodes(max_frame=4096)
    node.drop_put_after = 8192
    client = clients([node.address], timeout=30.0)
    started = reactor.seconds()
    with pytest.raises(ClusterUnavailable, match="cannot be read again"):
        await client.put(io.BufferedReader(OneWayStream(100_000)), "/piped")
    assert reactor.seconds() - started < 5.0
    assert "/piped" not in node.files


@pytest_twisted.ensureDeferred
async def test_put_from_a_stream_is_redirected_when_nothing_was_read(nodes, clients):
    leader = nodes()
    follower = nodes()
    follower.redirect_to = leader.address
    source = OneWayStream(10_000)
    await clients([follower.address]).put(io.BufferedReader(source), "/s")
    assert leader.files["/s"][1] == source.content()


@pytest_twisted.ensureDeferred
async def test_put_gives_up_with_cluster_unavailable_after_the_timeout(nodes, clients, tmp_path):
    node = nodes()
    node.unavailable = True
    client = clients([node.address], timeout=0.5)
    with pytest.raises(ClusterUnavailable):
        await client.put(write_file(tmp_path, "f", b"x"), "/x")
    assert len(node.requests) >= 2  # it did retry meanwhile


@pytest_twisted.ensureDeferred
async def test_put_refusals_map_to_exceptions(nodes, clients, tmp_path):
    node = nodes()
    client = clients([node.address])
    with pytest.raises(InvalidPath):
        await client.put(write_file(tmp_path, "f", b"x"), "/a/../b")
    with pytest.raises(LocalError):
        await client.put(tmp_path / "missing", "/x")
    assert node.requests == []  # nothing was sent for either


@pytest_twisted.ensureDeferred
async def test_put_with_integrity_reply_is_an_integrity_error(nodes, clients, tmp_path):
    node = nodes()
    node.damage_uploads = True
    with pytest.raises(IntegrityError):
        await clients([node.address]).put(write_file(tmp_path, "f", b"abc"), "/x")


@pytest_twisted.ensureDeferred
async def test_upload_to_a_node_that_stops_reading_stays_bounded(nodes, twisted_clients, monkeypatch):
    clients = twisted_clients  # it watches the Twisted transport's buffer
    """The client never queues more than about one frame in its transport, however big the file."""
    from storg.net import connection as connection_module

    max_frame = 1024 * 1024
    node = nodes(max_frame=max_frame)
    node.store_data = False
    node.pause_after_ready = True
    client = clients([node.address], timeout=30.0)
    peak = [0]
    original_send = connection_module.RequestConnection.send

    def send(self, frame):
        original_send(self, frame)
        peak[0] = max(peak[0], buffered(self.transport))

    monkeypatch.setattr(connection_module.RequestConnection, "send", send)
    total = 64 * 1024 * 1024
    source = OneWayStream(total, pattern=b"0123456789abcdef")
    d = defer.Deferred.fromCoroutine(client.put(io.BufferedReader(source), "/big"))

    def stalled() -> bool:
        conn = client._connections.get(node.address)
        return conn is not None and bool(conn._writers) and buffered(conn.transport) > 0

    await wait_for(stalled, "the client to wait for the stalled node")
    conn = client._connections[node.address]
    assert buffered(conn.transport) <= max_frame + 128 * 1024
    assert source.reads < 24 * 1024 * 1024, source.reads
    for proto in node.protocols:
        proto.transport.resumeProducing()
    info = await d
    assert info.size == total
    assert info.sha256 == hashlib.sha256(source.content()).hexdigest()
    assert peak[0] <= max_frame + 128 * 1024


def buffered(transport) -> int:
    """Bytes waiting in a Twisted TCP transport's write buffer."""
    return (len(transport.dataBuffer) - transport.offset) + transport._tempDataLen


# --- get ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_get_to_a_stream_verifies_and_reports_progress(nodes, clients):
    node = nodes(get_frame=1000)
    data = os.urandom(10_500)
    node.add_file("/f", data)
    sink = io.BytesIO()
    seen = []
    info = await clients([node.address]).get("f", sink, progress=lambda d, t: seen.append((d, t)))
    assert sink.getvalue() == data and info.size == len(data)
    assert seen[-1] == (len(data), len(data))
    assert [r.stale for r in node.requests] == [False]


@pytest_twisted.ensureDeferred
async def test_stale_get_says_so(nodes, clients):
    node = nodes()
    node.add_file("/f", b"abc")
    await clients([node.address]).get("/f", io.BytesIO(), stale=True)
    assert node.requests[0].stale is True


@pytest_twisted.ensureDeferred
async def test_get_with_a_corrupted_byte_is_an_integrity_error(nodes, clients, tmp_path):
    node = nodes()
    node.add_file("/f", os.urandom(50_000))
    node.corrupt_get = True
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(IntegrityError, match="SHA-256"):
        await clients([node.address]).get("/f", target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]


@pytest_twisted.ensureDeferred
async def test_get_of_a_missing_file_is_not_found(nodes, clients, tmp_path):
    node = nodes()
    with pytest.raises(NotFoundError):
        await clients([node.address]).get("/nope", tmp_path / "out")
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_get_retries_another_node_when_nothing_was_written(nodes, clients):
    bad = nodes()
    good = nodes()
    for node in (bad, good):
        node.add_file("/f", b"payload")
    bad.drop_get_after = 0  # GetStart, then the connection drops
    sink = OneWaySink()
    await clients([bad.address, good.address]).get("/f", sink)
    assert sink.getvalue() == b"payload"


@pytest_twisted.ensureDeferred
async def test_get_lost_midway_into_a_pipe_is_cluster_unavailable(nodes, clients):
    bad = nodes(get_frame=1000)
    good = nodes()
    for node in (bad, good):
        node.add_file("/f", os.urandom(20_000))
    bad.drop_get_after = 5000
    with pytest.raises(ClusterUnavailable):
        await clients([bad.address, good.address]).get("/f", OneWaySink())


@pytest_twisted.ensureDeferred
async def test_get_lost_midway_into_a_file_starts_over_elsewhere(nodes, clients, tmp_path):
    bad = nodes(get_frame=1000)
    good = nodes()
    data = os.urandom(20_000)
    for node in (bad, good):
        node.add_file("/f", data)
    bad.drop_get_after = 5000
    target = tmp_path / "out"
    await clients([bad.address, good.address]).get("/f", target)
    assert target.read_bytes() == data
    assert os.listdir(tmp_path) == ["out"]


@pytest_twisted.ensureDeferred
async def test_a_node_failing_every_get_midway_is_given_up_on(nodes, clients, tmp_path):
    node = nodes(get_frame=1000)
    node.add_file("/f", os.urandom(20_000))
    node.drop_get_after = 5000
    target = tmp_path / "out"
    with pytest.raises(ClusterUnavailable, match="interrupted"):
        await clients([node.address], timeout=30.0).get("/f", target)
    assert os.listdir(tmp_path) == []


# --- ls, stat, rm -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_ls_collects_every_page(nodes, clients):
    node = nodes(page_size=2)
    for name in ("/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/ab", "/b"):
        node.add_file(name, name.encode())
    client = clients([node.address])
    files = await client.ls("a")
    assert [f.path for f in files] == ["/a/1", "/a/2", "/a/3", "/a/4", "/a/5"]
    assert len(await client.ls()) == 7
    assert await client.ls("/none") == []
    assert [r.prefix for r in node.requests] == ["/a", "/", "/none"]


@pytest_twisted.ensureDeferred
async def test_stat_and_rm(nodes, clients):
    node = nodes()
    node.add_file("/f", b"abc")
    client = clients([node.address])
    info = await client.stat("f", stale=True)
    assert info.chunks[0].holders == ("n1", "n2")
    version = await client.rm("/f")
    assert version == node.version and "/f" not in node.files
    with pytest.raises(NotFoundError):
        await client.stat("/f")
    with pytest.raises(NotFoundError):
        await client.rm("/f")


@pytest_twisted.ensureDeferred
async def test_reads_move_on_from_an_unavailable_node(nodes, clients):
    down = nodes()
    down.unavailable = True
    up = nodes()
    up.add_file("/f", b"abc")
    client = clients([down.address, up.address])
    assert (await client.stat("/f")).size == 3
    assert [f.path for f in await client.ls()] == ["/f"]


@pytest_twisted.ensureDeferred
async def test_bad_request_from_the_server(nodes, clients, monkeypatch):
    node = nodes()

    def refuse(self, frame):
        self.error(frame.request_id, 4, "path refused")

    import fake_node
    monkeypatch.setattr(fake_node.NodeProtocol, "on_StatRequest", refuse)
    with pytest.raises(BadRequest):
        await clients([node.address]).stat("/f")


# --- small puts in one round trip ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_small_put_does_not_wait_for_put_ready_once_max_frame_is_known(nodes, clients, tmp_path):
    node = nodes(max_frame=4096)
    client = clients([node.address])
    await client.put(io.BytesIO(b"first"), "/first")  # learns max_frame the usual way
    node.ready_late = True  # PutReady only after PutEnd: waiting for it would hang
    for name, data in [("mem", b"m" * 300), ("empty", b""), ("limit", os.urandom(4096))]:
        info = await client.put(io.BytesIO(data), f"/{name}")
        assert node.files[f"/{name}"][1] == data and info.size == len(data)
    info = await client.put(write_file(tmp_path, "f", b"from disk"), "/disk")
    assert node.files["/disk"][1] == b"from disk" and info.sha256 == hashlib.sha256(b"from disk").hexdigest()
    assert len({s.client_id for s in node.put_starts}) == 1
    node.ready_late, node.skip_ready = False, True  # PutDone alone is answer enough
    info = await client.put(io.BytesIO(b"no ready"), "/noready")
    assert node.files["/noready"][1] == b"no ready" and info.size == 8


@pytest_twisted.ensureDeferred
async def test_a_put_larger_than_max_frame_still_waits_for_put_ready(nodes, clients):
    node = nodes(max_frame=4096)
    client = clients([node.address])
    await client.put(io.BytesIO(b"first"), "/first")
    data = os.urandom(4097)
    info = await client.put(io.BytesIO(data), "/bigger")  # the fake asserts every frame fits
    assert node.files["/bigger"][1] == data and info.size == 4097


@pytest_twisted.ensureDeferred
async def test_a_pipelined_put_refused_by_a_former_leader_goes_to_the_new_one(nodes, clients):
    old = nodes()
    new = nodes()
    client = clients([old.address, new.address])
    await client.put(io.BytesIO(b"one"), "/one")
    old.redirect_to = new.address  # old learned it is no longer the leader
    data = b"two" * 50
    info = await client.put(io.BytesIO(data), "/two")
    assert new.files["/two"][1] == data and info.size == len(data)
    assert "/two" not in old.files
    assert (old.put_starts[-1].client_id, old.put_starts[-1].seq) == (
        new.put_starts[-1].client_id, new.put_starts[-1].seq)
    # The old node's errors for the PutData and PutEnd it was sent anyway were dropped.
    await client.put(io.BytesIO(b"three"), "/three")
    assert new.files["/three"][1] == b"three"


@pytest_twisted.ensureDeferred
async def test_a_pipelined_put_whose_connection_drops_is_sent_again(nodes, clients):
    node = nodes()
    client = clients([node.address])
    await client.put(io.BytesIO(b"warm"), "/warm")
    node.drop_put_after = 1
    data = os.urandom(1000)
    info = await client.put(io.BytesIO(data), "/again")
    assert node.files["/again"][1] == data and info.size == 1000
    assert (node.put_starts[-1].client_id, node.put_starts[-1].seq) == (
        node.put_starts[-2].client_id, node.put_starts[-2].seq)


@pytest_twisted.ensureDeferred
async def test_in_memory_sources_and_sinks_larger_than_a_frame(nodes, clients):
    node = nodes(max_frame=4096, get_frame=4096)
    client = clients([node.address])
    data = os.urandom(100_000)
    seen = []
    await client.put(io.BytesIO(data), "/mem", progress=lambda d, t: seen.append((d, t)))
    assert node.files["/mem"][1] == data and seen[-1] == (len(data), len(data))
    sink = io.BytesIO()
    info = await client.get("/mem", sink)
    assert sink.getvalue() == data and info.size == len(data)


# --- big frames: payloads as views, batched writes, background sync ------------------

@pytest_twisted.ensureDeferred
async def test_get_of_large_frames_with_a_corrupted_byte_writes_nothing_under_the_name(
        nodes, clients, tmp_path):
    """1 MiB GetData frames (collected read by read, payloads handed on as views)."""
    node = nodes(get_frame=1 << 20)
    node.add_file("/big", os.urandom(5 * (1 << 20) + 17))
    node.corrupt_get = True
    target = tmp_path / "out"
    with pytest.raises(IntegrityError, match="SHA-256"):
        await clients([node.address]).get("/big", target)
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_get_of_large_frames_into_a_stream_is_exact(nodes, clients):
    node = nodes(get_frame=1 << 20)
    data = os.urandom(3 * (1 << 20) + 5)
    node.add_file("/big", data)
    sink = OneWaySink()
    info = await clients([node.address]).get("/big", sink)
    assert sink.getvalue() == data and info.size == len(data)


@pytest_twisted.ensureDeferred
async def test_get_into_a_file_syncs_in_the_background_as_it_goes(nodes, clients, tmp_path, monkeypatch):
    from storg.client import localfile as client_files

    monkeypatch.setattr(client_files, "SYNC_EVERY", 1 << 20)
    synced = []
    real = client_files.DownloadSink.sync_now

    def counting(sink):
        synced.append(sink.f.tell())
        real(sink)

    monkeypatch.setattr(client_files.DownloadSink, "sync_now", counting)
    node = nodes(get_frame=256 * 1024)
    data = os.urandom(6 * (1 << 20))
    node.add_file("/big", data)
    target = tmp_path / "out"
    await clients([node.address]).get("/big", target)
    assert target.read_bytes() == data
    assert synced  # at least one fdatasync before the final fsync
    # A stream sink (stdout, say) is never fdatasync'ed.
    synced.clear()
    await clients([node.address]).get("/big", io.BytesIO())
    assert synced == []


@pytest.mark.parametrize("where", ["start", "end"])
@pytest_twisted.ensureDeferred
async def test_a_disk_full_refusal_ends_the_put_at_once_with_disk_full(nodes, clients, tmp_path, where):
    """DISK_FULL is not retried on the other nodes until the timeout, which would report
    "cluster unavailable" and hide the reason: the put fails with DiskFull, promptly."""
    full, other = nodes(max_frame=1024), nodes(max_frame=1024)
    full.disk_full = where
    client = clients([full.address, other.address], timeout=20.0)
    started = reactor.seconds()
    with pytest.raises(DiskFull, match="disk reserve|holders"):
        await client.put(write_file(tmp_path, "f", os.urandom(5000)), "/x")
    assert reactor.seconds() - started < 5
    assert len(full.put_starts) == 1 and other.put_starts == []
