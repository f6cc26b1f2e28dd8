"""The state machine's side of repair: per-node usage and ChunkHoldersCommand."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.fsm.errors import InvalidCommand, StaleChange
from storg.fsm.machine import FileStoreStateMachine
from storg.raft.types import Entry, EntryType
from storg.wire import CODEC
from storg.wire.chunks import (
    ChunkHoldersCommand,
    CollectChunksCommand,
    PutFileCommand,
    PutInlineCommand,
    RemoveFileCommand,
)
from storg.wire.files import ChunkRef


def h(n: int) -> str:
    return hashlib.sha256(b"chunk %d" % n).hexdigest()


def put(path: str, *chunks: ChunkRef) -> PutFileCommand:
    return PutFileCommand(0, 0, 1, path, sum(c.size for c in chunks),
                          hashlib.sha256(path.encode()).hexdigest(), tuple(chunks))


class Log:
    """Applies commands as consecutive entries, like a node's apply loop."""

    def __init__(self, fsm: FileStoreStateMachine | None = None) -> None:
        self.fsm = fsm or FileStoreStateMachine()
        self.index = 0

    def apply(self, command: object):
        self.index += 1
        return self.fsm.apply(Entry(term=1, index=self.index, type=EntryType.NORMAL, data=CODEC.encode(command)))


def test_usage_follows_puts_overwrites_holder_changes_and_collection():
    log = Log()
    log.apply(put("/a", ChunkRef(h(1), 100, ("n1", "n2")), ChunkRef(h(2), 10, ("n2", "n3"))))
    assert log.fsm.usage() == {"n1": 100, "n2": 110, "n3": 10}
    log.apply(put("/b", ChunkRef(h(1), 100, ())))  # dedup: no new copy
    assert log.fsm.usage() == {"n1": 100, "n2": 110, "n3": 10}
    log.apply(put("/c", ChunkRef(h(1), 100, ("n4",))))  # a fresh copy merges in
    assert log.fsm.usage()["n4"] == 100
    assert log.apply(ChunkHoldersCommand(h(1), ("n1", "n2", "n4"), ("n2", "n4", "n5"))) == log.index
    assert log.fsm.usage() == {"n2": 110, "n3": 10, "n4": 100, "n5": 100}
    for path in ("/a", "/b", "/c"):
        log.apply(RemoveFileCommand(0, 0, 1, path))
    assert log.fsm.usage() == {"n2": 110, "n3": 10, "n4": 100, "n5": 100}  # garbage until collected
    log.apply(CollectChunksCommand((h(1), h(2))))
    assert log.fsm.usage() == {}


def test_inline_files_count_for_their_holders():
    log = Log()
    log.apply(PutInlineCommand(0, 0, 1, "/s", b"hello", ("n1", "n3")))
    assert log.fsm.usage() == {"n1": 5, "n3": 5}


def test_a_holder_change_decided_on_an_old_view_is_refused_and_changes_nothing():
    log = Log()
    log.apply(put("/a", ChunkRef(h(1), 10, ("n1", "n2"))))
    before = log.fsm.digest()
    with pytest.raises(StaleChange):
        log.apply(ChunkHoldersCommand(h(1), ("n1",), ("n1", "n3")))
    with pytest.raises(StaleChange):
        log.apply(ChunkHoldersCommand(h(9), ("n1", "n2"), ("n1", "n3")))  # not in the map
    assert log.fsm.digest() == before
    log.apply(ChunkHoldersCommand(h(1), ("n2", "n1"), ("n1", "n2", "n3")))
    with pytest.raises(StaleChange):  # the same decision replayed after it applied
        log.apply(ChunkHoldersCommand(h(1), ("n1", "n2"), ("n1", "n2", "n4")))
    assert sorted(log.fsm.chunk(h(1)).holders) == ["n1", "n2", "n3"]


def test_a_chunk_collected_before_its_repair_is_not_brought_back():
    log = Log()
    log.apply(put("/a", ChunkRef(h(1), 10, ("n1", "n2"))))
    log.apply(RemoveFileCommand(0, 0, 1, "/a"))
    log.apply(CollectChunksCommand((h(1),)))
    with pytest.raises(StaleChange):
        log.apply(ChunkHoldersCommand(h(1), ("n1", "n2"), ("n1", "n2", "n3")))
    assert log.fsm.chunk(h(1)) is None


@pytest.mark.parametrize("holders", [(), ("n1", "n1")])
def test_holder_changes_need_distinct_holders(holders):
    log = Log()
    log.apply(put("/a", ChunkRef(h(1), 10, ("n1", "n2"))))
    with pytest.raises(InvalidCommand):
        log.apply(ChunkHoldersCommand(h(1), ("n1", "n2"), holders))


def test_usage_survives_a_snapshot():
    log = Log()
    log.apply(put("/a", ChunkRef(h(1), 100, ("n1", "n2")), ChunkRef(h(2), 7, ("n3",))))
    log.apply(ChunkHoldersCommand(h(2), ("n3",), ("n3", "n4")))
    restored = FileStoreStateMachine()
    restored.restore(log.fsm.freeze().frames())
    assert restored.usage() == log.fsm.usage() == {"n1": 100, "n2": 100, "n3": 7, "n4": 7}
    assert restored.digest() == log.fsm.digest()


NODES = ["n1", "n2", "n3", "n4", "n5"]
commands = st.one_of(
    st.builds(lambda p, c, hs: put(f"/{p}", ChunkRef(h(c), 10 + c, tuple(hs))),
              st.integers(0, 3), st.integers(0, 5), st.sets(st.sampled_from(NODES), max_size=3)),
    st.builds(lambda p: RemoveFileCommand(0, 0, 1, f"/{p}"), st.integers(0, 3)),
    st.builds(lambda cs: CollectChunksCommand(tuple(h(c) for c in cs)), st.sets(st.integers(0, 5))),
    st.builds(lambda c, old, new: ChunkHoldersCommand(h(c), tuple(old), tuple(new)),
              st.integers(0, 5), st.sets(st.sampled_from(NODES), min_size=1, max_size=3),
              st.sets(st.sampled_from(NODES), min_size=1, max_size=3)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, max_size=30))
def test_any_sequence_gives_the_same_state_and_usage_on_every_replica(sequence):
    a, b = Log(), Log()
    for command in sequence:
        outcomes = []
        for log in (a, b):
            try:
                outcomes.append(("ok", log.apply(command)))
            except Exception as exc:  # the refusal is the outcome compared
                outcomes.append((type(exc).__name__, str(exc)))
        assert outcomes[0] == outcomes[1]
    assert a.fsm.digest() == b.fsm.digest()
    assert a.fsm.usage() == b.fsm.usage()
    expected: dict[str, int] = {}
    for digest in a.fsm.chunk_digests():
        chunk = a.fsm.chunk_by_digest(digest)
        for holder in chunk.holders:
            expected[holder] = expected.get(holder, 0) + chunk.size
    assert a.fsm.usage() == expected
