"""storgctl as a process against fake nodes: outputs, exit codes, and what a failed get leaves."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest_twisted
from fake_node import FakeNode
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater

MAIN = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


def spawn_storgctl(node_or_address, *argv: str, stdin: bytes = b"", timeout: str = "3"):
    """Start ``python -m storg.cli.main``; the reactor keeps serving the fake node meanwhile."""
    address = getattr(node_or_address, "address", node_or_address)
    proto = _Collect(stdin)
    env = dict(os.environ, PYTHONPATH=MAIN)
    process = reactor.spawnProcess(
        proto, sys.executable,
        [sys.executable, "-m", "storg.cli.main", "--cluster", address, "--timeout", timeout, *argv],
        env=env, path=MAIN)
    return proto, process


async def storgctl(node_or_address, *argv: str, stdin: bytes = b"",
                   timeout: str = "3") -> tuple[int, bytes, str]:
    """Run storgctl to the end: (exit status, stdout, stderr)."""
    proto, _ = spawn_storgctl(node_or_address, *argv, stdin=stdin, timeout=timeout)
    code = await proto.ended
    return code, b"".join(proto.out), b"".join(proto.err).decode()


@pytest_twisted.async_yield_fixture
async def node():
    fake = FakeNode(max_frame=4096, get_frame=1000)
    yield fake
    await fake.close()


@pytest_twisted.ensureDeferred
async def test_put_then_get_round_trip_through_files_and_pipes(node, tmp_path):
    data = os.urandom(30_000)
    (tmp_path / "in").write_bytes(data)
    code, out, err = await storgctl(node, "put", str(tmp_path / "in"), "docs/in")
    assert (code, out, err) == (0, b"", "")
    code, out, err = await storgctl(node, "put", "-", "/docs/piped", stdin=b"from stdin")
    assert code == 0, err
    assert node.files["/docs/piped"][1] == b"from stdin"
    code, out, err = await storgctl(node, "get", "/docs/in", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out").read_bytes() == data
    code, out, _ = await storgctl(node, "get", "docs/piped")
    assert (code, out) == (0, b"from stdin")
    code, out, _ = await storgctl(node, "get", "docs/piped", "-")
    assert (code, out) == (0, b"from stdin")
    # A folder as LOCAL receives the file under its own name.
    code, _, err = await storgctl(node, "get", "/docs/piped", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "piped").read_bytes() == b"from stdin"
    assert sorted(os.listdir(tmp_path)) == ["in", "out", "piped"]


@pytest_twisted.ensureDeferred
async def test_a_path_of_4096_bytes_is_stored_and_one_of_4097_refused(node):
    longest = "/" + "k" * 2000 + "/" + "é" * 1047  # 2000 + 1 + 2094 = 4095 bytes, then one more
    longest += "z"
    assert len(longest.encode()) - 1 == 4096
    code, _, err = await storgctl(node, "put", "-", longest, stdin=b"long")
    assert code == 0, err
    assert node.files[longest][1] == b"long"
    code, out, err = await storgctl(node, "get", longest, "-")
    assert (code, out) == (0, b"long"), err
    code, _, err = await storgctl(node, "put", "-", longest + "z", stdin=b"too long")
    assert code == 2 and "4097 bytes" in err
    assert longest + "z" not in node.files


@pytest_twisted.ensureDeferred
async def test_ls_stat_rm_outputs(node):
    node.add_file("/a/x", b"12345")
    node.add_file("/a/y", b"1")
    node.add_file("/a/z", b"")
    node.add_file("/ab", b"not in /a")
    code, out, err = await storgctl(node, "ls", "a")
    assert code == 0, err
    lines = out.decode().splitlines()
    assert [line.split() for line in lines] == [
        ["5", "2023-11-14T22:13:20Z", "/a/x"], ["1", "2023-11-14T22:13:20Z", "/a/y"],
        ["0", "2023-11-14T22:13:20Z", "/a/z"]]
    code, out, _ = await storgctl(node, "--json", "ls")
    rows = json.loads(out)
    assert [r["path"] for r in rows] == ["/a/x", "/a/y", "/a/z", "/ab"]
    assert rows[0]["sha256"] == hashlib.sha256(b"12345").hexdigest()
    code, out, _ = await storgctl(node, "--json", "stat", "--stale", "/a/x")
    info = json.loads(out)
    assert info["chunks"][0]["holders"] == ["n1", "n2"] and info["size"] == 5
    assert node.requests[-1].stale is True
    code, out, _ = await storgctl(node, "stat", "a/x")
    assert code == 0 and b"size:      5" in out
    assert (await storgctl(node, "rm", "/a/x"))[0] == 0
    code, out, err = await storgctl(node, "rm", "/a/x")
    assert code == 1 and err == "storgctl: /a/x: not found\n"
    code, out, err = await storgctl(node, "get", "/a/x", "-")
    assert code == 1 and out == b"" and err.startswith("storgctl: ")


@pytest_twisted.ensureDeferred
async def test_corrupt_get_exits_4_and_leaves_local_untouched(node, tmp_path):
    node.add_file("/f", os.urandom(20_000))
    node.corrupt_get = True
    (tmp_path / "out").write_bytes(b"previous content")
    code, _, err = await storgctl(node, "get", "/f", str(tmp_path / "out"))
    assert code == 4, err
    assert err.startswith("storgctl: integrity error") and err.count("\n") == 1
    assert (tmp_path / "out").read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out"]


@pytest_twisted.ensureDeferred
async def test_get_failing_midway_leaves_no_partial_file(node, tmp_path):
    node.add_file("/f", os.urandom(20_000))
    node.drop_get_after = 5000
    code, _, err = await storgctl(node, "get", "/f", str(tmp_path / "new"))
    assert code == 3, err
    assert err.startswith("storgctl: cluster unavailable")
    (tmp_path / "old").write_bytes(b"keep me")
    code, _, err = await storgctl(node, "get", "/f", str(tmp_path / "old"))
    assert code == 3, err
    assert os.listdir(tmp_path) == ["old"]
    assert (tmp_path / "old").read_bytes() == b"keep me"


@pytest_twisted.ensureDeferred
async def test_interrupted_get_removes_its_temporary_file_and_does_not_exit_0(node, tmp_path):
    node.add_file("/f", os.urandom(20_000))
    node.stall_get_after = 5000
    (tmp_path / "out").write_bytes(b"old")
    proto, process = spawn_storgctl(node, "get", "/f", str(tmp_path / "out"), timeout="30")
    deadline = reactor.seconds() + 20
    while len(os.listdir(tmp_path)) < 2 or not node.requests:
        assert reactor.seconds() < deadline, "the get never started"
        await deferLater(reactor, 0.01, lambda: None)
    process.signalProcess("INT")
    code = await proto.ended
    assert code == 130
    assert b"".join(proto.err) == b"storgctl: interrupted\n"
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"old"


@pytest_twisted.ensureDeferred
async def test_no_cluster_exits_3_within_the_timeout(tmp_path):
    probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    address = f"127.0.0.1:{probe.getHost().port}"
    await probe.stopListening()  # nothing listens there now
    started = reactor.seconds()
    code, _, err = await storgctl(address, "ls", timeout="0.5")
    assert code == 3 and err.startswith("storgctl: cluster unavailable")
    assert reactor.seconds() - started < 10


@pytest_twisted.ensureDeferred
async def test_server_side_integrity_refusal_of_a_put_exits_4(node, tmp_path):
    node.damage_uploads = True
    (tmp_path / "in").write_bytes(b"abc")
    code, _, err = await storgctl(node, "put", str(tmp_path / "in"), "/x")
    assert code == 4, err


@pytest_twisted.ensureDeferred
async def test_get_of_a_composite_object_is_verified_part_by_part(node, tmp_path):
    from storg.wire.objects import ObjectAttrs
    from storg.wire.record import replace as replace_record

    parts = [os.urandom(3000), os.urandom(1), os.urandom(2500)]
    data = b"".join(parts)
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
    plain = node.add_file("/multi", data)
    attrs = ObjectAttrs("00" * 16 + "-3", parts=tuple(map(len, parts)))
    node.files["/multi"] = (replace_record(plain, sha256=composite, attrs=attrs), data)
    code, out, err = await storgctl(node, "get", "/multi", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out").read_bytes() == data
    code, out, _ = await storgctl(node, "stat", "/multi")
    assert b"(composite of 3 parts)" in out
    # The same bytes cut into other parts do not match: exit 4, nothing left behind.
    wrong = replace_record(attrs, parts=(2999, 2, 2500))
    node.files["/multi"] = (replace_record(plain, sha256=composite, attrs=wrong), data)
    code, _, err = await storgctl(node, "get", "/multi", str(tmp_path / "again"))
    assert code == 4 and "SHA-256 mismatch" in err, err
    assert not (tmp_path / "again").exists()
