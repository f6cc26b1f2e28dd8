"""The S3 gateway's side of the client library against one real node (issue 18).

The node is a whole NodeService in this process (Raft of one, 64 KiB
chunks so that ranges cross chunk boundaries cheaply), on loopback: every
call crosses the real wire, handlers, proposals and state machine.
Covered: ETags (the node's MD5) and attributes on put, the ETag condition,
PutStream (flow control, finish, abort, size checks), ranged and resumed
get_stream, stat_at and ls_page with their read index, copy with new
attributes onto itself, compose (verified part by part on get, chunks
kept while referenced), and S3 keys.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from storg.client.api import StorgClient
from storg.client.errors import (
    BadRequest,
    ClusterUnavailable,
    ConflictError,
    IntegrityError,
    LimitExceeded,
    LocalError,
    NotFoundError,
    ProtocolViolation,
)
from storg.testing.devcluster import free_port
from storg.wire.objects import ObjectAttrs, S3Key

from tests.client.one_node import one_node_client

CHUNK = 64 * 1024


@pytest_twisted.async_yield_fixture
async def client(tmp_path: Path):
    async with one_node_client(tmp_path, files={"chunk_size": CHUNK}) as c:
        yield c


async def read(c: StorgClient, path: str, **kw) -> bytes:
    out: list[bytes] = []
    await c.get_stream(path, out.append, **kw)
    return b"".join(out)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_every_put_gets_the_md5_as_its_etag_and_keeps_given_attributes(client) -> None:
    small, big = b"tiny", os.urandom(3 * CHUNK + 5)
    assert (await client.put(io.BytesIO(small), "/b/small")).attrs == ObjectAttrs(md5(small))
    assert (await client.put(io.BytesIO(big), "/b/big")).attrs.etag == md5(big)
    attrs = ObjectAttrs("", "text/plain", (("colour", "blue"),), (("CRC32", "AAAAAA=="),))
    info = await client.put(io.BytesIO(big), "/b/meta", attrs=attrs)
    assert info.attrs == ObjectAttrs(md5(big), "text/plain", (("colour", "blue"),), (("CRC32", "AAAAAA=="),))
    assert (await client.stat("/b/meta")).attrs == info.attrs
    assert [f.attrs.etag for f in await client.ls("/b")] == [md5(big), md5(big), md5(small)]
    given = await client.put(io.BytesIO(small), "/b/given", attrs=ObjectAttrs("abc-2"))
    assert given.attrs.etag == "abc-2"  # the caller's ETag wins (a multipart part's, say)


@pytest_twisted.ensureDeferred
async def test_if_match_etag_is_a_compare_and_swap(client) -> None:
    first = await client.put(io.BytesIO(b"one"), "/k")
    with pytest.raises(ConflictError, match="ETag"):
        await client.put(io.BytesIO(b"two"), "/k", if_match_etag=md5(b"other"))
    assert await read(client, "/k") == b"one"
    second = await client.put(io.BytesIO(b"two"), "/k", if_match_etag=first.attrs.etag)
    assert second.attrs.etag == md5(b"two")
    with pytest.raises(ConflictError):
        await client.put(io.BytesIO(b"three"), "/k", if_absent=True, attrs=ObjectAttrs())


@pytest_twisted.ensureDeferred
async def test_put_stream_pushes_pieces_with_flow_control_and_commits_on_finish(client) -> None:
    data = os.urandom(5 * CHUNK + 123)
    stream = client.put_stream("/s/obj", size=len(data), attrs=ObjectAttrs(content_type="video/mp4"))
    for pos in range(0, len(data), 10_000):
        await stream.write(data[pos:pos + 10_000])
    assert await client.ls("/s") == []  # nothing visible before finish
    info = await stream.finish()
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert info.attrs == ObjectAttrs(md5(data), "video/mp4")
    assert info.version == (await client.stat("/s/obj")).version
    assert await read(client, "/s/obj") == data


async def _no_uploads_left(client) -> None:
    uploads = client.service.files._uploads
    for _ in range(100):
        if not uploads:
            return
        await deferLater(reactor, 0.02, lambda: None)
    assert not uploads


@pytest_twisted.ensureDeferred
async def test_put_stream_finish_with_attrs_stores_them_in_the_one_entry(client) -> None:
    data = os.urandom(3 * CHUNK + 9)
    node = client.service.node
    await client.put(io.BytesIO(b"first"), "/s/first")  # the leader's own first entry is applied by now
    stream = client.put_stream("/s/trailer", size=len(data), attrs=ObjectAttrs(content_type="text/plain"))
    await stream.write(data)
    before = node.applied_index
    final = ObjectAttrs(content_type="text/plain", metadata=(("m", "1"),), checksums=(("CRC32", "q83vEg=="),))
    info = await stream.finish(attrs=final)
    assert node.applied_index == before + 1 and info.version == before + 1  # one entry: the put's
    assert info.attrs == ObjectAttrs(md5(data), "text/plain", (("m", "1"),), (("CRC32", "q83vEg=="),))
    assert (await client.stat("/s/trailer")).attrs == info.attrs
    assert await read(client, "/s/trailer") == data
    # The start's conditions still hold with the end's attributes.
    again = client.put_stream("/s/trailer", if_absent=True)
    await again.write(b"second")
    with pytest.raises(ConflictError):
        await again.finish(attrs=ObjectAttrs(checksums=(("CRC32", "AAAAAA=="),)))
    assert (await client.stat("/s/trailer")).attrs == info.attrs


@pytest_twisted.ensureDeferred
async def test_put_stream_finish_with_bad_attrs_is_refused_and_stores_nothing(client) -> None:
    node = client.service.node
    await client.put(io.BytesIO(b"first"), "/s/first")  # the leader's own first entry is applied by now
    stream = client.put_stream("/s/parts")
    await stream.write(os.urandom(2 * CHUNK))
    before = node.applied_index
    with pytest.raises(BadRequest, match="parts"):
        await stream.finish(attrs=ObjectAttrs(parts=(CHUNK, CHUNK)))
    huge = client.put_stream("/s/huge")
    await huge.write(b"x")
    with pytest.raises(LimitExceeded, match="exceed"):
        await huge.finish(attrs=ObjectAttrs(metadata=tuple((f"k{i}", "v" * 200) for i in range(6000))))
    assert node.applied_index == before
    for path in ("/s/parts", "/s/huge"):
        with pytest.raises(NotFoundError):
            await client.stat(path)
    await _no_uploads_left(client)
    await client.put(io.BytesIO(b"after"), "/s/after")  # the connection still serves


@pytest_twisted.ensureDeferred
async def test_an_aborted_put_stream_commits_nothing_and_the_client_goes_on(client) -> None:
    stream = client.put_stream("/s/aborted")
    await stream.write(os.urandom(2 * CHUNK))
    stream.abort()
    with pytest.raises(ProtocolViolation, match="aborted"):
        await stream.write(b"more")
    early = client.put_stream("/s/never")  # aborted before the leader even answered
    early.abort()
    with pytest.raises(NotFoundError):
        await client.stat("/s/aborted")
    # The connection and the upload slots still serve.
    await client.put(io.BytesIO(b"after"), "/s/after")
    assert await read(client, "/s/after") == b"after"
    await _no_uploads_left(client)


@pytest_twisted.ensureDeferred
async def test_put_stream_size_mismatch_is_refused(client) -> None:
    stream = client.put_stream("/s/short", size=10)
    await stream.write(b"12345")
    with pytest.raises(IntegrityError, match="announced"):
        await stream.finish()
    long = client.put_stream("/s/long", size=3)
    with pytest.raises(IntegrityError, match="more than"):
        await long.write(b"1234")
    with pytest.raises(NotFoundError):
        await client.stat("/s/short")


@pytest_twisted.ensureDeferred
async def test_ranged_get_stream_sends_only_the_range_verified(client) -> None:
    data = os.urandom(4 * CHUNK + 77)
    put = await client.put(io.BytesIO(data), "/r/f")
    for offset, length in [(0, 10), (CHUNK - 3, 6), (CHUNK, CHUNK), (5, 3 * CHUNK), (len(data) - 1, 1),
                           (len(data), 0), (2 * CHUNK + 1, None), (0, None)]:
        starts: list = []
        got = await read(client, "/r/f", offset=offset, length=length,
                         on_start=lambda info, index, starts=starts: starts.append((info, index)))
        end = len(data) if length is None else offset + length
        assert got == data[offset:end], (offset, length)
        assert len(starts) == 1 and starts[0][0].sha256 == put.sha256 and starts[0][1] >= put.version
    with pytest.raises(BadRequest, match="past the end"):
        await read(client, "/r/f", offset=len(data) + 1)
    with pytest.raises(NotFoundError):
        await read(client, "/r/none")


@pytest_twisted.ensureDeferred
async def test_get_stream_waits_for_a_slow_writer(client) -> None:
    data = os.urandom(6 * CHUNK)
    await client.put(io.BytesIO(data), "/r/slow")
    got: list[bytes] = []
    waiting: list[defer.Deferred] = []

    def write(piece: bytes) -> defer.Deferred:
        assert not waiting or waiting[-1].called  # never handed a piece before the last one was taken
        got.append(piece)
        d = deferLater(reactor, 0.01, lambda: None)
        waiting.append(d)
        return d

    await client.get_stream("/r/slow", write)
    assert b"".join(got) == data and len(got) == 6


@pytest_twisted.ensureDeferred
async def test_get_stream_resumes_at_the_next_offset_after_a_lost_connection(client) -> None:
    data = os.urandom(5 * CHUNK)
    await client.put(io.BytesIO(data), "/r/resume")
    got: list[bytes] = []
    starts: list[int] = []
    asked: list[tuple[int, int]] = []
    files = client.service.files
    real_get = files.get

    def spy(req, conn):
        asked.append((req.offset, sum(map(len, got))))  # where it resumes, and what was delivered
        return real_get(req, conn)

    files.get = spy  # each new connection looks its handlers up afresh
    client.close()

    def write(piece: bytes) -> None:
        got.append(piece)
        if len(got) == 2:  # the connection goes after two chunks
            for conn in client._connections.values():
                conn.abort()

    info = await client.get_stream("/r/resume", write, offset=100, on_start=lambda i, index: starts.append(index))
    assert b"".join(got) == data[100:] and info.sha256 == hashlib.sha256(data).hexdigest()
    assert len(starts) == 1
    assert len(asked) == 2 and asked[0] == (100, 0)
    assert asked[1][0] == 100 + asked[1][1] and asked[1][1] >= 2 * CHUNK - 100  # resumed, not restarted


@pytest_twisted.ensureDeferred
async def test_stat_at_and_ls_page_give_the_read_index(client) -> None:
    names = [f"/b/photos/2024-{m:02d}" for m in range(1, 8)] + ["/b/photos/2025-01", "/b/x"]
    last = None
    for name in names:
        last = await client.put(io.BytesIO(name.encode()), name)
    info, index = await client.stat_at("/b/x")
    assert info.path == "/b/x" and index >= last.version
    page, index, more = await client.ls_page("/b/photos/2024-", limit=3)
    assert [f.path for f in page] == names[:3] and more and index >= last.version
    assert page[0].attrs.etag == md5(names[0].encode())
    page, _, more = await client.ls_page("/b/photos/2024-", start_after=page[-1].path, limit=3)
    assert [f.path for f in page] == names[3:6] and more
    page, _, more = await client.ls_page("/b/photos/2024-", start_after=page[-1].path, limit=3)
    assert [f.path for f in page] == names[6:7] and not more
    assert (await client.ls_page("/nothing/"))[0] == []


@pytest_twisted.ensureDeferred
async def test_cp_with_attributes_replaces_them_also_onto_itself(client) -> None:
    data = os.urandom(2 * CHUNK)
    before = await client.put(io.BytesIO(data), "/b/k", attrs=ObjectAttrs(content_type="a/b"))
    new = ObjectAttrs(before.attrs.etag, "c/d", (("mtime", "1700000000"),))
    assert await client.cp("/b/k", "/b/k", attrs=new) == 1
    after = await client.stat("/b/k")
    assert after.attrs == new and after.sha256 == before.sha256 and after.version > before.version
    assert await client.cp("/b/k", "/b/other", attrs=ObjectAttrs()) == 1
    assert (await client.stat("/b/other")).attrs == ObjectAttrs()
    assert await read(client, "/b/other") == data


@pytest_twisted.ensureDeferred
async def test_compose_builds_one_object_verified_part_by_part_and_gc_keeps_its_chunks(client) -> None:
    parts = [os.urandom(CHUNK + 10), os.urandom(2 * CHUNK), os.urandom(999)]
    await client.put(io.BytesIO(b""), "/.storg-multipart/u1/info",
                     attrs=ObjectAttrs(extra=(("target", "/b/big"),)))
    for i, part in enumerate(parts, 1):
        stream = client.put_stream(f"/.storg-multipart/u1/{i:05d}")
        await stream.write(part)
        await stream.finish()
    etag = md5(b"".join(bytes.fromhex(md5(p)) for p in parts)) + "-3"
    info = await client.compose("/b/big", [f"/.storg-multipart/u1/{i:05d}" for i in (1, 2, 3)],
                                attrs=ObjectAttrs(etag, "application/zip"), remove="/.storg-multipart/u1")
    whole = b"".join(parts)
    assert info.size == len(whole) and info.attrs.parts == tuple(map(len, parts))
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
    assert info.sha256 == composite and info.attrs.etag == etag
    assert await client.ls("/.storg-multipart") == []
    await client.service.files.garbage.collect_garbage()
    assert await read(client, "/b/big") == whole  # whole-object check: composite hash, part by part
    out = io.BytesIO()
    await client.get("/b/big", out)  # the storgctl path verifies it the same way
    assert out.getvalue() == whole
    assert await read(client, "/b/big", offset=CHUNK, length=CHUNK + 20) == whole[CHUNK:2 * CHUNK + 20]
    with pytest.raises(ConflictError):
        await client.compose("/b/big", ["/b/big"], attrs=ObjectAttrs(), if_absent=True)


@pytest_twisted.ensureDeferred
async def test_s3_keys_are_created_listed_without_secrets_and_revoked(client) -> None:
    key_id, secret = await client.s3_key_create("backup", "readwrite")
    assert key_id.isalnum() and len(key_id) == 20 and len(secret) == 40
    other, _ = await client.s3_key_create("ops", "admin")
    keys = await client.s3_key_list()
    assert sorted(k.id for k in keys) == sorted([key_id, other])
    assert all(isinstance(k, S3Key) and not hasattr(k, "secret") for k in keys)
    assert client.service.fsm.s3_secret(key_id) == (secret, "readwrite")
    with pytest.raises(BadRequest, match="role"):
        await client.s3_key_create("bad", "root")
    await client.s3_key_revoke(key_id)
    assert client.service.fsm.s3_secret(key_id) is None
    with pytest.raises(NotFoundError):
        await client.s3_key_revoke(key_id)


@pytest_twisted.ensureDeferred
async def test_get_r_reads_a_small_composed_object_whole(client, tmp_path) -> None:
    """A batch of get -r leaves a composite (its SHA-256 is of its parts' digests) to the ordinary get."""
    from storg.client.tree import get_tree
    parts = [b"first part ", b"second part"]
    for i, part in enumerate(parts, 1):
        stream = client.put_stream(f"/.storg-multipart/u2/{i:05d}")
        await stream.write(part)
        await stream.finish()
    await client.compose("/s/small", [f"/.storg-multipart/u2/{i:05d}" for i in (1, 2)],
                         attrs=ObjectAttrs("e-2"), remove="/.storg-multipart/u2")
    await client.put(io.BytesIO(b"plain"), "/s/plain")
    report = await get_tree(client, "/s", str(tmp_path / "out"))
    assert report.failed == [] and report.files == 2
    assert (tmp_path / "out" / "small").read_bytes() == b"".join(parts)
    assert (tmp_path / "out" / "plain").read_bytes() == b"plain"


@pytest_twisted.ensureDeferred
async def test_a_put_stream_without_a_cluster_fails_every_call_as_unavailable(tmp_path) -> None:
    lonely = StorgClient([f"127.0.0.1:{free_port()}"], reactor=reactor, timeout=0.5)
    try:
        stream = lonely.put_stream("/x")
        with pytest.raises(ClusterUnavailable):
            await stream.write(b"data")
        with pytest.raises(ClusterUnavailable):
            await stream.finish()
        with pytest.raises(ClusterUnavailable):
            await lonely.put_stream("/y").finish()
    finally:
        lonely.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_receiver_ends_the_get_stream_without_retrying(client) -> None:
    await client.put(io.BytesIO(os.urandom(3 * CHUNK)), "/r/fail")
    calls: list[int] = []

    def write(piece: bytes) -> defer.Deferred:
        calls.append(len(piece))
        return defer.fail(ConnectionResetError("the S3 client went away"))

    with pytest.raises(LocalError, match="went away"):
        await client.get_stream("/r/fail", write)
    assert len(calls) == 1
