"""A real full file system: every node's data_dir on its own small tmpfs, filled to the reserve.

README.rst, "Configuration" (``files.disk_reserve_mb``) and "Exit status": below the reserve puts
are refused with exit 3 and "disk full" on stderr, promptly (not after the client's timeout);
gets, ls, stat and rm work; no node stops; and once rm and garbage collection free space, puts
work again.  The tmpfs must mount (we run as root, here and in CI): if it does not, the test
fails saying so, it does not skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storg.testing.devcluster import ProcCluster, wait_for

pytestmark = pytest.mark.process

MIB = 1 << 20
TMPFS_MB = 48
RESERVE_MB = 24
FILE_BYTES = 2 * MIB
CHUNK = 256 * 1024


def mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
        why = out.stderr.strip() or f"exit status {out.returncode}"
    except OSError as exc:  # no mount(8) at all
        out, why = None, str(exc)
    if out is None or out.returncode != 0:
        pytest.fail(f"cannot mount a {size_mb} MiB tmpfs on {where} (this test needs root and "
                    f"mount(8); it must not be skipped): {why}", pytrace=False)


def unmount(where: Path) -> None:
    """Unmount; lazily if something still holds it, so no mount outlives the test."""
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / MIB


def mounted_cluster(tmp_path, files):
    c = ProcCluster.create(tmp_path, size=3, files=files)
    mounts = [c.data_dir(nid) for nid in c.nodes]
    mounted: list[Path] = []
    try:
        for where in mounts:
            mount_tmpfs(where, TMPFS_MB)
            mounted.append(where)
        c.start_all()
        wait_for(c.leader, 30, "a leader")
        yield c
    finally:
        c.close()  # the nodes first: a busy tmpfs does not unmount
        for where in mounted:
            unmount(where)


@pytest.fixture
def full_cluster(tmp_path):
    yield from mounted_cluster(tmp_path, {
        "chunk_size": CHUNK, "disk_reserve_mb": RESERVE_MB, "gc_interval_s": 0.5, "orphan_grace_s": 2.0})


@pytest.fixture
def unreserved_cluster(tmp_path):
    yield from mounted_cluster(tmp_path, {"chunk_size": CHUNK, "disk_reserve_mb": 0})


def ctl(cluster, *args, input=None):
    return cluster.storgctl("--timeout", "20", *args, input=input, timeout=90)


def all_alive(cluster) -> None:
    dead = [nid for nid, node in cluster.nodes.items() if not node.alive()]
    assert not dead, f"nodes stopped: {dead}\n" + "\n".join(cluster.log_text(n)[-3000:] for n in dead)


def test_puts_are_refused_below_the_reserve_and_work_again_once_space_is_freed(full_cluster):
    c = full_cluster
    stored: dict[str, bytes] = {}
    refusal = None
    for i in range(TMPFS_MB):  # far more than fits: each put takes FILE_BYTES on every node
        data = os.urandom(FILE_BYTES)
        started = time.monotonic()
        out = ctl(c, "put", "-", f"/fill/{i}", input=data)
        took = time.monotonic() - started
        if out.returncode == 0:
            stored[f"/fill/{i}"] = data
            continue
        refusal = out
        break
    assert refusal is not None, f"{len(stored)} puts of {FILE_BYTES} bytes were all accepted"
    err = refusal.stderr.decode()
    assert refusal.returncode == 3 and err.startswith("storgctl: disk full:"), (refusal.returncode, err)
    assert "disk_reserve_mb" in err and "\n" not in err.rstrip("\n")
    assert took < 15, f"the refusal took {took:.1f} s: the client retried it as if unavailable"
    assert stored, "the very first put was refused: the reserve leaves no room at all"
    for nid in c.nodes:
        # Stopped well before the disk is full: the Raft log always has room.
        assert free_mb(c.data_dir(nid)) > RESERVE_MB / 2, (nid, free_mb(c.data_dir(nid)))

    # A small file (its bytes ride in the log entry) is refused too.
    small = ctl(c, "put", "-", "/small", input=b"tiny")
    assert small.returncode == 3 and b"disk full" in small.stderr, small.stderr

    # Reads, listings and stats go on, from every node.
    some = sorted(stored)[0]
    for nid in c.nodes:
        got = c.storgctl("get", some, "-", nodes=[nid], timeout=60)
        assert got.returncode == 0 and hashlib.sha256(got.stdout).digest() == \
            hashlib.sha256(stored[some]).digest(), (nid, got.stderr)
    listing = ctl(c, "ls", "/fill")
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == len(stored)
    assert ctl(c, "stat", some).returncode == 0
    all_alive(c)

    # Deletes go through the log and free the space (garbage collection deletes the chunks).
    for path in sorted(stored)[: max(2, len(stored) // 2 + 1)]:
        out = ctl(c, "rm", path)
        assert out.returncode == 0, out.stderr
        del stored[path]
    wait_for(lambda: all(free_mb(c.data_dir(nid)) > RESERVE_MB + 2 * FILE_BYTES / MIB for nid in c.nodes),
             60, "garbage collection to free space above the reserve on every node")

    # Puts work again (the reserve re-measures every second).
    data = os.urandom(FILE_BYTES)

    def put_again() -> bool:
        return ctl(c, "put", "-", "/again", input=data).returncode == 0

    wait_for(put_again, 30, "a put to be accepted once space was freed", interval=0.5)
    assert ctl(c, "get", "/again", "-").stdout == data
    for path, content in stored.items():
        assert ctl(c, "get", path, "-").stdout == content, path
    all_alive(c)
    logs = "".join(c.log_text(nid) for nid in c.nodes)
    assert "below the disk reserve" in logs and "above the disk reserve again" in logs
    assert "storage failure" not in logs


def fill_up(where: Path) -> Path:
    """Write a ballast file until the file system says ENOSPC; returns it."""
    ballast = where / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for block in (MIB, 4096):
            try:
                while True:
                    f.write(bytes(block))
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC
                    raise
    assert free_mb(where) < 0.01, free_mb(where)
    return ballast


def applied(cluster, nid) -> int:
    rows = cluster.status(nodes=[nid])
    return next(r["applied_index"] for r in rows if r["id"] == nid)


def test_a_raft_log_write_that_hits_enospc_holds_and_resumes_instead_of_stopping_the_node(unreserved_cluster):
    """No reserve (0) and a disk filled behind the node's back: its WAL append fails with ENOSPC.

    The node used to stop ("storage failure, stopping").  Now it holds the
    write, acknowledges nothing it did not persist, keeps running, and
    resumes once space is freed; the cluster goes on with the other two.
    """
    c = unreserved_cluster
    leader = wait_for(c.leader, 30, "a leader")
    victim = next(nid for nid in c.nodes if nid != leader)
    ballast = fill_up(c.data_dir(victim))
    # Small files ride in their log entries (up to 4 KiB each): the victim's
    # WAL uses up its 1 MiB of zero fill, then needs a block the disk lacks.
    payload = os.urandom(4000)
    count = [0]

    def one(i: int) -> int:
        return ctl(c, "put", "-", f"/small/{i}", input=payload + i.to_bytes(4, "big")).returncode

    deadline = time.monotonic() + 240
    with ThreadPoolExecutor(4) as pool:
        while "the Raft log cannot be written" not in c.log_text(victim):
            assert time.monotonic() < deadline, "the victim's WAL never hit ENOSPC"
            all_alive(c)
            codes = list(pool.map(one, range(count[0], count[0] + 40)))
            assert codes == [0] * len(codes), codes  # the other two commit every put
            count[0] += len(codes)
    all_alive(c)
    assert "storage failure" not in c.log_text(victim)
    # Held: it applies nothing more, while the others go on.
    held_at = applied(c, victim)
    for i in range(count[0], count[0] + 20):
        assert one(i) == 0
    count[0] += 20
    assert applied(c, victim) <= held_at + 1, "a node with a full log applied entries it could not write"
    all_alive(c)

    ballast.unlink()  # space freed: the retry (every second) gets through
    last = f"/small/{count[0] - 1}"
    wait_for(lambda: "the Raft log is writable again" in c.log_text(victim), 30,
             "the victim to write its log again")

    def caught_up() -> bool:
        out = c.storgctl("--json", "ls", "--stale", "/small", nodes=[victim], timeout=30)
        return out.returncode == 0 and len(json.loads(out.stdout)) == count[0]

    wait_for(caught_up, 60, "the victim to apply every put")
    got = c.storgctl("get", "--stale", last, "-", nodes=[victim], timeout=30)
    assert got.returncode == 0 and got.stdout == payload + (count[0] - 1).to_bytes(4, "big")
    all_alive(c)
