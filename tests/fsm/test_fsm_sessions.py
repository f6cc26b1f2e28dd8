"""Client sessions: a retried put or rm applies once; stale requests are refused; eviction is LRU."""

from __future__ import annotations

import hashlib

import pytest

from storg.fsm.errors import ChunkMissing, InvalidCommand, NotFound, StaleRequest
from storg.fsm.machine import FileStoreStateMachine
from storg.raft.types import Entry
from storg.wire import BAD_REQUEST, CODEC
from storg.wire.chunks import CollectChunksCommand, PutFileCommand, RemoveFileCommand
from storg.wire.files import ChunkRef


def h(n: int) -> str:
    return hashlib.sha256(b"chunk %d" % n).hexdigest()


def put(path: str, n: int, client: int, seq: int, holders: tuple[str, ...] = ("n1",)) -> PutFileCommand:
    return PutFileCommand(client, seq, 1, path, 10, h(1000 + n), (ChunkRef(h(n), 10, holders),))


def rm(path: str, client: int, seq: int) -> RemoveFileCommand:
    return RemoveFileCommand(client, seq, 1, path)


class Log:
    def __init__(self, max_sessions: int = 10000) -> None:
        self.fsm = FileStoreStateMachine(max_sessions=max_sessions)
        self.index = 0

    def __call__(self, command: object) -> object:
        self.index += 1
        return self.fsm.apply(Entry(1, self.index, data=CODEC.encode(command)))


A, B = 0x1234, 0x5678


def test_a_retried_put_applies_once_and_returns_the_first_result() -> None:
    log = Log()
    first = log(put("/f", 1, A, 1))
    log(put("/f", 2, B, 1))  # another client overwrites meanwhile
    again = log(put("/f", 1, A, 1))
    assert again == first and again.version == 1
    assert log.fsm.get("/f").chunks[0].hash == h(2)
    assert log.fsm.chunk(h(1)).refs == 0 and log.fsm.chunk(h(2)).refs == 1


def test_a_retried_rm_that_succeeded_gets_success_again() -> None:
    log = Log()
    log(put("/f", 1, A, 1))
    assert log(rm("/f", A, 2)) == 2
    assert log(rm("/f", A, 2)) == 2, "the retry gets the first outcome, not NotFound"
    assert log.fsm.get("/f") is None


def test_a_retried_rm_that_failed_fails_again_without_touching_a_new_file() -> None:
    log = Log()
    with pytest.raises(NotFound, match="/f"):
        log(rm("/f", A, 1))
    log(put("/f", 1, B, 1))
    with pytest.raises(NotFound, match="/f"):
        log(rm("/f", A, 1))
    assert log.fsm.get("/f") is not None


def test_a_refused_invalid_command_is_replayed_too() -> None:
    log = Log()
    with pytest.raises(InvalidCommand):
        log(put("/a/../b", 1, A, 1))
    with pytest.raises(InvalidCommand):
        log(put("/a/../b", 1, A, 1))
    assert log.fsm.stats()["sessions"] == 1


def test_a_stale_seq_is_refused_without_effect() -> None:
    log = Log()
    log(put("/f", 1, A, 5))
    with pytest.raises(StaleRequest, match="seq 4 is older than its last, 5") as info:
        log(put("/g", 2, A, 4))
    assert info.value.code == BAD_REQUEST
    with pytest.raises(StaleRequest):
        log(rm("/f", A, 1))
    assert log.fsm.get("/g") is None and log.fsm.get("/f") is not None
    assert log(put("/g", 2, A, 6)).path == "/g"


def test_client_zero_has_no_session() -> None:
    log = Log()
    first = log(put("/f", 1, 0, 1))
    second = log(put("/f", 1, 0, 1))
    assert (first.version, second.version) == (1, 2)
    assert log(rm("/f", 0, 0)) == 3
    with pytest.raises(NotFound):
        log(rm("/f", 0, 0))
    assert log.fsm.stats()["sessions"] == 0


def test_chunk_missing_is_not_recorded_so_the_retry_applies() -> None:
    log = Log()
    log(put("/old", 1, B, 1))
    log(rm("/old", B, 2))
    log(CollectChunksCommand((h(1),)))
    reuse = PutFileCommand(A, 7, 1, "/f", 10, h(1001), (ChunkRef(h(1), 10, ()),))
    with pytest.raises(ChunkMissing):
        log(reuse)
    info = log(put("/f", 1, A, 7))  # the leader uploaded the chunk again; same seq
    assert info.version == 5 and log.fsm.get("/f") == info


def test_sessions_are_evicted_least_recently_used_first() -> None:
    log = Log(max_sessions=3)
    firsts = {client: log(put(f"/c{client}", client, client, 1)) for client in (1, 2, 3)}
    assert log(put("/c1", 1, 1, 1)) == firsts[1]  # a retry counts as use: client 1 is now newest
    log(put("/c4", 4, 4, 1))  # evicts client 2, the least recently used
    assert log.fsm.stats()["sessions"] == 3
    assert log(put("/c1", 1, 1, 1)) == firsts[1]
    assert log(put("/c3", 3, 3, 1)) == firsts[3]
    # Client 2's session is gone: its retry applies again (the documented limit).
    again = log(put("/c2", 2, 2, 1))
    assert again.version == log.index and again != firsts[2]


def test_eviction_is_the_same_on_every_node() -> None:
    logs = [Log(max_sessions=5), Log(max_sessions=5)]
    for log in logs:
        for i in range(40):
            client = (i * 7) % 11 + 1
            try:
                log(put(f"/p{i % 6}", i, client, i // 3))
            except StaleRequest:
                pass
    assert logs[0].fsm.digest() == logs[1].fsm.digest()
    assert logs[0].fsm.stats()["sessions"] == 5
