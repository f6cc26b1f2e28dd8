"""mv, cp, rm -r, conditional puts, put -r and get -r through the client library and one real node.

The node is a whole NodeService (Raft of one, the file store, its client
port) in this process, on loopback without TLS, so each call crosses the
real wire, handler, proposal and state machine.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from storg.client.api import StorgClient
from storg.client.errors import BadRequest, ConflictError, NotFoundError
from storg.client.tree import get_tree, put_tree, walk_local
from storg.paths import InvalidPath

from tests.client.one_node import one_node_client


@pytest_twisted.async_yield_fixture
async def client(tmp_path: Path):
    async with one_node_client(tmp_path) as c:
        yield c


async def put_bytes(c: StorgClient, path: str, data: bytes, **kw):
    import io
    return await c.put(io.BytesIO(data), path, **kw)


async def read(c: StorgClient, path: str) -> bytes:
    import io
    out = io.BytesIO()
    await c.get(path, out)
    return out.getvalue()


async def names(c: StorgClient, prefix: str = "/") -> list[str]:
    return [f.path for f in await c.ls(prefix)]


@pytest_twisted.ensureDeferred
async def test_mv_cp_and_rm_r_end_to_end(client) -> None:
    big = os.urandom(300_000)  # chunked, not inline
    await put_bytes(client, "/d/a", b"small a")
    await put_bytes(client, "/d/sub/big", big)
    assert await client.mv("/d", "/e") == 2
    assert await names(client) == ["/e/a", "/e/sub/big"]
    assert await read(client, "/e/sub/big") == big
    assert await client.cp("/e", "/c", recursive=True) == 2
    before = await client.stat("/e/sub/big")
    copy = await client.stat("/c/sub/big")
    assert [c.hash for c in copy.chunks] == [c.hash for c in before.chunks]
    assert await client.rm_tree("/e") == 2
    # The copy's chunks are still referenced: a garbage round collects nothing of them.
    await client.service.files.garbage.collect_garbage()
    assert await read(client, "/c/sub/big") == big
    fsm = client.service.files.fsm
    assert all(fsm.chunk(c.hash).refs == 1 for c in copy.chunks)
    assert await names(client) == ["/c/a", "/c/sub/big"]


@pytest_twisted.ensureDeferred
async def test_mv_and_cp_refusals(client) -> None:
    await put_bytes(client, "/x", b"1")
    await put_bytes(client, "/y", b"2")
    with pytest.raises(ConflictError, match="--force"):
        await client.mv("/x", "/y")
    with pytest.raises(ConflictError):
        await client.cp("/x", "/y")
    assert await read(client, "/y") == b"2"
    assert await client.mv("/x", "/y", force=True) == 1
    assert await read(client, "/y") == b"1"
    with pytest.raises(NotFoundError):
        await client.mv("/nothing", "/z")
    with pytest.raises(InvalidPath):
        await client.mv("/y", "/y/inside")  # refused before sending
    with pytest.raises(BadRequest, match="-r"):
        await put_bytes(client, "/f/a", b"a") and await client.cp("/f", "/g")
    with pytest.raises(NotFoundError):
        await client.rm_tree("/nothing")


@pytest_twisted.ensureDeferred
async def test_conditional_puts(client) -> None:
    first, second = await defer.DeferredList([
        defer.Deferred.fromCoroutine(put_bytes(client, "/lock", b"first", if_absent=True)),
        defer.Deferred.fromCoroutine(put_bytes(client, "/lock", b"second", if_absent=True)),
    ], consumeErrors=True)
    outcomes = sorted([first[0], second[0]])
    assert outcomes == [False, True], "exactly one of two racing --if-absent puts succeeds"
    loser = first if not first[0] else second
    assert loser[1].check(ConflictError)
    content = await read(client, "/lock")
    sha = hashlib.sha256(content).hexdigest()
    with pytest.raises(ConflictError, match="if-match"):
        await put_bytes(client, "/lock", b"new", if_match="0" * 64)
    await put_bytes(client, "/lock", b"new", if_match=sha)
    assert await read(client, "/lock") == b"new"
    with pytest.raises(ConflictError):
        await put_bytes(client, "/lock", b"newer", if_match=sha)  # the swap happened: sha is stale
    big = os.urandom(200_000)  # a chunked conditional put
    with pytest.raises(ConflictError):
        await put_bytes(client, "/lock", big, if_absent=True)
    await put_bytes(client, "/lock", big, if_match=hashlib.sha256(b"new").hexdigest())
    assert await read(client, "/lock") == big


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "empty": b"",
        "a/b/c/d/e/deep.txt": b"deep",
        "unicode/\u00e9t\u00e9 \u2603.txt": b"snow",
        "big.bin": os.urandom(150_000),
    }
    for i in range(200):
        files[f"many/f{i:03d}"] = f"file {i}".encode()
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "link").symlink_to(root / "big.bin")
    (root / "emptydir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    return files


def test_walk_skips_symlinks_and_special_files(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    items, skipped, bad = walk_local(str(tmp_path / "src"), "/up")
    assert sorted(i.remote for i in items) == sorted("/up/" + rel for rel in files)
    assert sorted(os.path.basename(p) for p, _ in skipped) == ["link", "sock"]
    assert bad == []


@pytest_twisted.ensureDeferred
async def test_put_r_and_get_r_round_trip(client, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    seen = []
    report = await put_tree(client, str(tmp_path / "src"), "/up", jobs=8,
                            progress=lambda *a: seen.append(a))
    assert report.failed == [] and report.files == len(files)
    assert report.bytes == sum(len(d) for d in files.values())
    assert len(report.skipped) == 2
    assert seen[-1] == (len(files), len(files), report.bytes, report.bytes)
    assert sorted(await names(client, "/up")) == sorted("/up/" + rel for rel in files)
    back = await get_tree(client, "/up", str(tmp_path / "dst"), jobs=8)
    assert back.failed == [] and back.files == len(files)
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data
    leftovers = [p for p in (tmp_path / "dst").rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "no temporary file is left behind"


@pytest_twisted.ensureDeferred
async def test_get_r_failure_leaves_no_partial_file(client, tmp_path: Path) -> None:
    await put_bytes(client, "/t/a", b"aaa")
    await put_bytes(client, "/t/b/c", b"ccc")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "b").write_bytes(b"a file where a folder must go")
    report = await get_tree(client, "/t", str(dst))
    assert report.files == 1 and [p for p, _ in report.failed] == ["/t/b/c"]
    assert (dst / "a").read_bytes() == b"aaa"
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_watch_sees_every_change_in_order_and_resumes(client) -> None:
    from storg.client.errors import CompactedError
    from storg.wire.tree import WATCH_KINDS

    start = client.service.files.watches.applied() + 1
    await put_bytes(client, "/w/a", b"1")
    await put_bytes(client, "/w/a", b"2")
    await put_bytes(client, "/elsewhere", b"x")
    await client.mv("/w", "/v")
    await client.cp("/v/a", "/w/b")
    await client.rm_tree("/v")
    await client.rm("/w/b")
    events = []
    last = await client.watch("/w", events.append, start=start, limit=5)
    got = [(WATCH_KINDS[e.kind], e.path, e.src) for e in events]
    # rm -r /v deletes /v/a, outside /w: not shown; the move's source is below /w: shown.
    assert got == [("create", "/w/a", ""), ("update", "/w/a", ""), ("move", "/v/a", "/w/a"),
                   ("create", "/w/b", ""), ("delete", "/w/b", "")]
    assert [e.index for e in events] == sorted(e.index for e in events)
    assert last == events[-1].index
    # A move out of the prefix shows (its source is below it); /elsewhere does not.
    assert all(e.path != "/elsewhere" for e in events)
    # Resuming from an index replays from there exactly.
    again = []
    await client.watch("/w", again.append, start=events[2].index, limit=2)
    assert [(e.index, e.kind, e.path) for e in again] == [(e.index, e.kind, e.path) for e in events[2:4]]
    # Live events: a watch from now sees the next change.
    live = []
    watching = defer.Deferred.fromCoroutine(client.watch("/", live.append, limit=1))
    await deferLater(reactor, 0.1, lambda: None)
    await put_bytes(client, "/later", b"l")
    await watching
    assert [(WATCH_KINDS[e.kind], e.path) for e in live] == [("create", "/later")]
    client.service.files.watches.capacity = 1  # the ring now keeps one entry's changes
    await put_bytes(client, "/evict", b"e")
    with pytest.raises(CompactedError, match="list"):
        await client.watch("/", live.append, start=start, limit=1)


@pytest_twisted.ensureDeferred
async def test_put_r_sends_small_files_in_batches(client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {f"d{i % 7}/f{i:04d}": os.urandom(i % 4097) for i in range(1100)}
    files["large/over-inline"] = os.urandom(4097)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    node = client.service.node
    before = node.applied_index
    report = await put_tree(client, str(src), "/b", jobs=4)
    assert report.failed == [] and report.files == len(files)
    entries = node.applied_index - before
    # 1,100 files of up to 4 KiB: at least 5 batches (1 MiB each at most), at most a handful more;
    # one entry per file would be 1,101.
    assert 5 <= entries <= 12, entries
    some = (await client.stat("/b/d3/f0003")).attrs.etag
    assert some == hashlib.md5(files["d3/f0003"]).hexdigest(), "a batched file has its MD5 as ETag"
    back = await get_tree(client, "/b", str(tmp_path / "dst"), jobs=4)
    assert back.failed == [] and back.files == len(files)
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_get_batch_says_what_it_did_not_read(client) -> None:
    await put_bytes(client, "/g/small", b"small")
    await put_bytes(client, "/g/big", os.urandom(70_000))
    reply = await client.get_batch(("/g/small", "/g/gone", "/g/big"))
    assert [(f.path, f.data, f.sha256) for f in reply.files] == [
        ("/g/small", b"small", hashlib.sha256(b"small").hexdigest())]
    assert reply.missing == ("/g/gone",) and reply.left == ("/g/big",)
    assert reply.index >= (await client.stat("/g/big")).version


@pytest_twisted.ensureDeferred
async def test_put_batch_checks_every_file_and_stores_none_on_a_mismatch(client) -> None:
    from storg.client.errors import IntegrityError
    from storg.wire.batch import BatchFile
    good = BatchFile("/c/good", b"good", hashlib.sha256(b"good").hexdigest())
    bad = BatchFile("/c/bad", b"bad", hashlib.sha256(b"not these bytes").hexdigest())
    with pytest.raises(IntegrityError):
        await client.put_batch((good, bad))
    assert await names(client, "/c") == []
    with pytest.raises(BadRequest):
        await client.put_batch((BatchFile("/c/large", b"x" * 4097, hashlib.sha256(b"x" * 4097).hexdigest()),))
    index = await client.put_batch((good,))
    assert (await client.stat("/c/good")).version == index
