"""The disk reserve without a real disk: measured on a timer, charged per accepted byte, and what
it refuses (puts, chunk copies) with DISK_FULL; a put whose holders are full fails DISK_FULL."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from twisted.internet import defer
from twisted.internet.task import Clock

from storg.config import ConfigError, FileTuning, load_config
from storg.fsm.machine import FileStoreStateMachine
from storg.net.errors import DiskFull
from storg.server.client_port import RequestError
from storg.server.files.chunk_io import Chunks
from storg.server.files.reserve import MIB, DiskReserve, free_bytes, is_disk_full
from storg.server.files.service import FileService
from storg.storage.chunks import ChunkStore
from storg.storage.errors import DiskFullError
from storg.wire import ErrorCode
from storg.wire.chunks import ChunkPutAfter, ChunkStored
from storg.wire.files import PutStart

RESERVE = 100 * MIB


def inline(fn, *args) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args)


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0
        self.error: OSError | None = None

    def __call__(self, path: str) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.free


def reserve_on(disk: Disk, reserve: int = RESERVE) -> tuple[DiskReserve, Clock]:
    clock = Clock()
    r = DiskReserve("n1", "/data", reserve, reactor=clock, run_in_thread=inline, measure=disk)
    r.start()
    return r, clock


def test_measured_at_start_then_on_a_timer_not_per_request():
    disk = Disk(500 * MIB)
    r, clock = reserve_on(disk)
    assert disk.calls == 1 and not r.below()
    for _ in range(100):
        r.check("put /x")
    assert disk.calls == 1  # checks read the cached figure
    disk.free = 50 * MIB
    assert not r.below()  # not seen before the next measurement
    clock.advance(1.0)
    assert disk.calls == 2 and r.below()
    with pytest.raises(RequestError) as info:
        r.check("put /x")
    assert info.value.code == ErrorCode.DISK_FULL
    assert "put /x refused" in str(info.value) and "files.disk_reserve_mb" in str(info.value)
    disk.free = 150 * MIB
    clock.advance(1.0)
    assert not r.below()
    r.stop()
    clock.advance(5.0)
    assert disk.calls == 3


def test_bytes_accepted_between_measurements_count_against_the_last_one():
    disk = Disk(RESERVE + 3 * MIB)
    r, clock = reserve_on(disk)
    r.charge(2 * MIB)
    assert not r.below()
    r.charge(2 * MIB)
    assert r.below() and r.free() == RESERVE - MIB
    disk.free = RESERVE + 10 * MIB  # the measurement sees what was written (and what was freed)
    clock.advance(1.0)
    assert not r.below() and r.charged == 0


def test_zero_disables_it_and_measures_nothing():
    disk = Disk(0)
    r, _ = reserve_on(disk, reserve=0)
    r.charge(10 * MIB)
    r.check("put /x")
    assert disk.calls == 0 and not r.below()


def test_an_unmeasurable_disk_is_not_a_full_one():
    disk = Disk(0)
    disk.error = OSError(5, "Input/output error")
    r, clock = reserve_on(disk)
    assert not r.below()
    r.check("put /x")
    disk.error = None
    clock.advance(1.0)
    assert r.below()


def test_free_bytes_of_a_real_file_system(tmp_path):
    assert free_bytes(str(tmp_path)) > 0


def test_is_disk_full_knows_every_form():
    assert is_disk_full(DiskFullError("ENOSPC"))
    assert is_disk_full(DiskFull("n2 is below its reserve"))
    assert is_disk_full(RequestError(ErrorCode.DISK_FULL, "x"))
    assert not is_disk_full(RequestError(ErrorCode.UNAVAILABLE, "x"))
    assert not is_disk_full(ConnectionRefusedError())


# --- the file service ----------------------------------------------------------------

class Pool:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def run(self, fn, *args) -> defer.Deferred:
        return inline(fn, *args)

    def get(self, chunk_hash):
        return self.run(self.store.get, chunk_hash)


class Node:
    node_id = "n1"
    applied_index = 10
    leader = "n1"

    class core:
        from storg.raft.types import ConfState
        conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
        last_index = 10

    def on_applied(self, watcher) -> None:
        pass

    def on_role_change(self, watcher) -> None:
        pass

    def is_leader(self) -> bool:
        return True


class Conn:
    open = True

    def on_close(self, cb) -> None:
        pass

    def send_soon(self, frame):
        return None


def service_with(tmp_path: Path, disk: Disk):
    store = ChunkStore(tmp_path / "chunks")
    clock = Clock()
    reserve = DiskReserve("n1", str(tmp_path), RESERVE, reactor=clock, run_in_thread=inline, measure=disk)
    service = FileService(Node(), FileStoreStateMachine(), Chunks("n1", Pool(store), None), replication_factor=3,
                          chunk_size=1 << 20, reactor=clock, hasher=inline, reserve=reserve)
    service.start()
    return service, store, clock


def outcome(d):
    out: list = []
    d.addBoth(out.append)
    return out


def test_below_the_reserve_puts_and_chunk_copies_are_refused_and_reads_go_on(tmp_path):
    import hashlib
    disk = Disk(RESERVE - 1)
    service, store, clock = service_with(tmp_path, disk)
    with pytest.raises(RequestError) as info:
        service.put_start(PutStart(1, "/f", 7, 1), Conn())
    assert info.value.code == ErrorCode.DISK_FULL
    data = b"chunk bytes"
    h = hashlib.sha256(data).hexdigest()
    refused = outcome(service.chunk_put_after(ChunkPutAfter(2, h, 0, data), Conn()))
    assert refused[0].check(RequestError) and refused[0].value.code == ErrorCode.DISK_FULL
    assert not store.has(h)
    # The leader's own copy (an upload or a repair placing a chunk on itself) too.
    mine = outcome(service.replicator.store_on("n1", h, data, 0))
    assert mine[0].check(RequestError) and mine[0].value.code == ErrorCode.DISK_FULL

    disk.free = RESERVE + 10 * MIB  # space freed
    clock.advance(1.0)
    service.replicator._placements[(h, "n1")] = 1  # an upload in flight on this leader placed it here
    stored = outcome(service.chunk_put_after(ChunkPutAfter(3, h, 0, data), Conn()))
    assert stored == [ChunkStored(3, h)] and store.get(h) == data
    service.stop()


def test_a_chunk_whose_holders_are_full_fails_disk_full_not_unavailable(tmp_path):
    service, store, clock = service_with(tmp_path, Disk(RESERVE * 10))
    rep = service.replicator
    answers = {"n1": defer.succeed("n1"), "n2": defer.fail(DiskFull("n2: below its disk reserve")),
               "n3": defer.fail(DiskFull("n3: below its disk reserve"))}
    rep.store_on = lambda holder, *args, **kw: answers[holder]
    failed = outcome(rep._store_on_holders("ab" * 32, b"x", ["n1", "n2", "n3"], need=2))
    assert failed[0].check(RequestError) and failed[0].value.code == ErrorCode.DISK_FULL
    assert "n2: below its disk reserve" in str(failed[0].value)
    # Unreachable holders (no disk full among them) stay UNAVAILABLE: retrying may help.
    answers = {"n1": defer.succeed("n1"), "n2": defer.fail(ConnectionRefusedError("n2")),
               "n3": defer.fail(ConnectionRefusedError("n3"))}
    failed = outcome(rep._store_on_holders("ab" * 32, b"x", ["n1", "n2", "n3"], need=2))
    assert failed[0].value.code == ErrorCode.UNAVAILABLE
    service.stop()


# --- configuration ------------------------------------------------------------------------

BASE = {
    "node_id": "n1", "data_dir": "data/n1", "peer_listen": "127.0.0.1:7001",
    "client_listen": "127.0.0.1:8001",
    "cluster": {"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001"}},
}


def load(tmp_path: Path, files: dict | None):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, files=files) if files is not None else BASE))
    return load_config(path)


def test_the_reserve_key():
    assert FileTuning().disk_reserve_mb == 256


def test_the_reserve_key_is_read_and_zero_disables(tmp_path):
    assert load(tmp_path, None).files.disk_reserve_mb == 256
    assert load(tmp_path, {"disk_reserve_mb": 16}).files.disk_reserve_mb == 16
    assert load(tmp_path, {"disk_reserve_mb": 0}).files.disk_reserve_mb == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "big", True, None])
def test_bad_reserves_are_one_line_errors(tmp_path, bad):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"disk_reserve_mb": bad})
    assert "files.disk_reserve_mb" in str(info.value) and "\n" not in str(info.value)
