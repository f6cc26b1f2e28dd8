"""FileStoreStateMachine.apply: puts, overwrites, removes, dedup, collection, queries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.config import Address, Member
from storg.fsm.errors import ChunkMissing, FileStoreError, InvalidCommand, NotFound
from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.members import MemberDirectory
from storg.fsm.sorted_paths import SortedPaths
from storg.fsm.state import ChunkState
from storg.paths import InvalidPath
from storg.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from storg.wire import (
    BAD_REQUEST,
    CODEC,
    NOT_FOUND,
    UNAVAILABLE,
    MemberAddress,
    ProbeCommand,
)
from storg.wire.chunks import CollectChunksCommand, PutFileCommand, RemoveFileCommand
from storg.wire.files import ChunkRef, PutStart

HOLDERS = ("n1", "n2", "n3")


def h(n: int) -> str:
    return hashlib.sha256(b"chunk %d" % n).hexdigest()


def fresh(n: int, size: int = 10, holders: tuple[str, ...] = HOLDERS) -> ChunkRef:
    return ChunkRef(h(n), size, holders)


def reuse(n: int, size: int = 10) -> ChunkRef:
    return ChunkRef(h(n), size, ())


def put(path: str, *chunks: ChunkRef, client: int = 0, seq: int = 0, mtime: int = 7) -> PutFileCommand:
    return PutFileCommand(client, seq, mtime, path, sum(c.size for c in chunks),
                          hashlib.sha256(path.encode()).hexdigest(), tuple(chunks))


def rm(path: str, client: int = 0, seq: int = 0) -> RemoveFileCommand:
    return RemoveFileCommand(client, seq, 9, path)


class Log:
    """Feeds commands to a state machine as entries with increasing indexes."""

    def __init__(self, fsm: FileStoreStateMachine | None = None) -> None:
        self.fsm = fsm or FileStoreStateMachine()
        self.index = 0

    def raw(self, data: bytes, type: EntryType = EntryType.NORMAL) -> object:
        self.index += 1
        return self.fsm.apply(Entry(1, self.index, type, data))

    def __call__(self, command: object) -> object:
        return self.raw(CODEC.encode(command))


@pytest.fixture
def log() -> Log:
    return Log()


def refs(fsm: FileStoreStateMachine, n: int) -> int | None:
    chunk = fsm.chunk(h(n))
    return None if chunk is None else chunk.refs


def test_put_makes_the_file_visible(log: Log) -> None:
    info = log(put("/a/b", fresh(1, 4), fresh(2, 6), mtime=1234))
    assert info == log.fsm.get("/a/b")
    assert (info.path, info.size, info.modified_ns, info.version) == ("/a/b", 10, 1234, 1)
    assert [(c.hash, c.size, c.holders) for c in info.chunks] == [(h(1), 4, HOLDERS), (h(2), 6, HOLDERS)]
    assert log.fsm.chunk(h(1)) == ChunkState(4, frozenset(HOLDERS), 1)
    assert log.fsm.stats() == {"files": 1, "chunks": 2, "bytes": 10, "sessions": 0}


def test_empty_file_has_no_chunks(log: Log) -> None:
    info = log(put("/empty"))
    assert info.size == 0 and info.chunks == ()
    assert log.fsm.get("/empty") == info


def test_command_paths_are_normalized(log: Log) -> None:
    assert log(put("a/b", fresh(1))).path == "/a/b"
    assert log.fsm.get("/a/b") is not None
    assert log(rm("a/b")) == 2


@pytest.mark.parametrize("path", ["", "/", "/a/../b", "/a//b", "/a/", "/a\x00"])
def test_invalid_command_paths_are_refused(log: Log, path: str) -> None:
    before = log.fsm.digest()
    with pytest.raises(InvalidCommand) as info:
        log(put(path, fresh(1)))
    assert info.value.code == BAD_REQUEST
    with pytest.raises(InvalidCommand):
        log(rm(path))
    assert log.fsm.digest() == before


def test_overwrite_moves_references(log: Log) -> None:
    log(put("/f", fresh(1), fresh(2)))
    info = log(put("/f", reuse(2), fresh(3)))
    assert info.version == 2
    assert (refs(log.fsm, 1), refs(log.fsm, 2), refs(log.fsm, 3)) == (0, 1, 1)
    assert log.fsm.unreferenced_chunks() == [h(1)]
    assert log.fsm.stats()["files"] == 1


def test_overwrite_with_the_same_content_keeps_references(log: Log) -> None:
    log(put("/f", fresh(1)))
    log(put("/f", fresh(1)))
    assert refs(log.fsm, 1) == 1
    assert log.fsm.unreferenced_chunks() == []


def test_a_chunk_listed_twice_counts_twice(log: Log) -> None:
    log(put("/f", fresh(1), reuse(1)))
    assert refs(log.fsm, 1) == 2
    log(put("/g", reuse(1)))
    assert refs(log.fsm, 1) == 3
    log(rm("/f"))
    assert refs(log.fsm, 1) == 1


def test_remove_drops_the_file_and_its_references(log: Log) -> None:
    log(put("/f", fresh(1), fresh(2)))
    log(put("/g", reuse(2)))
    assert log(rm("/f")) == 3
    assert log.fsm.get("/f") is None
    assert (refs(log.fsm, 1), refs(log.fsm, 2)) == (0, 1)
    assert log.fsm.stats() == {"files": 1, "chunks": 2, "bytes": 10, "sessions": 0}


def test_remove_of_a_missing_file_is_not_found(log: Log) -> None:
    with pytest.raises(NotFound) as info:
        log(rm("/nothing"))
    assert info.value.code == NOT_FOUND
    assert isinstance(info.value, FileStoreError)


def test_dedup_reuse_takes_the_holders_from_the_chunk_map(log: Log) -> None:
    log(put("/a", fresh(1, holders=("n1", "n2"))))
    info = log(put("/b", reuse(1)))
    assert info.chunks == (ChunkRef(h(1), 10, ("n1", "n2")),)
    assert refs(log.fsm, 1) == 2


def test_a_fresh_upload_of_a_known_chunk_merges_holders(log: Log) -> None:
    log(put("/a", fresh(1, holders=("n1",))))
    log(put("/b", fresh(1, holders=("n3", "n2"))))
    assert log.fsm.chunk(h(1)) == ChunkState(10, frozenset({"n1", "n2", "n3"}), 2)
    # Holders are read at query time: /a shows the holders added since.
    assert log.fsm.get("/a").chunks[0].holders == ("n1", "n2", "n3")


def test_reuse_of_a_chunk_collected_just_before_is_chunk_missing(log: Log) -> None:
    log(put("/a", fresh(1)))
    log(rm("/a"))
    assert log(CollectChunksCommand((h(1),))) == (h(1),)
    before = log.fsm.digest()
    with pytest.raises(ChunkMissing) as info:
        log(put("/b", fresh(2), reuse(1)))
    assert info.value.code == UNAVAILABLE
    # Refused as a whole: /b absent, chunk 2 not added.
    assert log.fsm.get("/b") is None and log.fsm.chunk(h(2)) is None
    assert log.fsm.digest() == before


def test_reuse_of_an_unreferenced_chunk_not_yet_collected_revives_it(log: Log) -> None:
    log(put("/a", fresh(1)))
    log(rm("/a"))
    assert log.fsm.unreferenced_chunks() == [h(1)]
    log(put("/b", reuse(1)))
    assert log.fsm.unreferenced_chunks() == []
    assert log(CollectChunksCommand((h(1),))) == ()
    assert log.fsm.get("/b").chunks[0].holders == HOLDERS


def test_collect_removes_only_unreferenced_chunks_and_tells_the_observer(log: Log) -> None:
    removed: list[tuple[str, ...]] = []
    log.fsm.on_chunks_removed = removed.append
    log(put("/a", fresh(1), fresh(2)))
    log(put("/b", fresh(3)))
    log(put("/a", reuse(2)))  # chunk 1 now unreferenced
    log(rm("/b"))  # chunk 3 too
    assert log.fsm.unreferenced_chunks() == sorted([h(1), h(3)])
    result = log(CollectChunksCommand((h(3), h(2), h(99), h(1), h(3))))
    assert result == (h(3), h(1))
    assert removed == [(h(3), h(1))]
    assert log.fsm.chunk(h(1)) is None and log.fsm.chunk(h(3)) is None
    assert log.fsm.chunk(h(2)).refs == 1
    assert log.fsm.unreferenced_chunks() == []
    assert log(CollectChunksCommand((h(2),))) == ()
    assert removed == [(h(3), h(1))], "the observer is not called when nothing was removed"


def test_a_failing_observer_does_not_fail_the_entry(log: Log) -> None:
    def broken(hashes: tuple[str, ...]) -> None:
        raise OSError("disk gone")

    log.fsm.on_chunks_removed = broken
    log(put("/a", fresh(1)))
    log(rm("/a"))
    assert log(CollectChunksCommand((h(1),))) == (h(1),)
    assert log.fsm.chunk(h(1)) is None


def test_inconsistent_sizes_are_refused_without_effect(log: Log) -> None:
    log(put("/a", fresh(1, 10)))
    before = log.fsm.digest()
    bad_total = PutFileCommand(0, 0, 1, "/b", 11, h(0), (fresh(2, 10),))
    with pytest.raises(InvalidCommand, match="add up"):
        log(bad_total)
    with pytest.raises(InvalidCommand, match="10 bytes, not 12"):
        log(put("/b", fresh(2, 5), fresh(1, 12)))
    with pytest.raises(InvalidCommand, match="5 bytes, not 6"):
        log(put("/b", fresh(2, 5), fresh(2, 6)))
    assert log.fsm.digest() == before


def test_entries_that_are_not_commands_are_refused(log: Log) -> None:
    with pytest.raises(InvalidCommand, match="holds no command"):
        log.raw(b"\x01\xfe garbage")
    with pytest.raises(InvalidCommand, match="holds no command"):
        log.raw(CODEC.encode(put("/a", fresh(1)))[:-3])
    with pytest.raises(InvalidCommand, match="PutStart is not a command"):
        log(PutStart(1, "/a", 0, 0))
    assert log.raw(b"") is None, "a leader's empty no-op entry"
    assert log.fsm.stats()["files"] == 0


def test_probe_returns_its_index(log: Log) -> None:
    log(put("/a", fresh(1)))
    assert log(ProbeCommand(b"x")) == 2
    assert log(ProbeCommand(b"")) == 3


def test_conf_change_entries_update_the_directory() -> None:
    directory = MemberDirectory({"n1": Member(Address("127.0.0.1", 7000), Address("127.0.0.1", 8000))})
    log = Log(FileStoreStateMachine(directory))
    context = CODEC.encode(MemberAddress("n4", "127.0.0.1:7004", "[::1]:8004"))
    assert log.raw(ConfChange(ConfChangeType.ADD_VOTER, "n4", context).encode(), EntryType.CONF_CHANGE) is None
    assert directory.members()["n4"] == Member(Address("127.0.0.1", 7004), Address("::1", 8004))
    log.raw(ConfChange(ConfChangeType.REMOVE, "n1").encode(), EntryType.CONF_CHANGE)
    assert set(directory.members()) == {"n4"}
    with pytest.raises(InvalidCommand, match="membership"):
        log.raw(b"\x00\x01", EntryType.CONF_CHANGE)


def test_applying_a_member_removal_writes_no_file(tmp_path, monkeypatch) -> None:
    """apply stays pure: a REMOVE only tells the directory's watchers; files are the server's business."""
    monkeypatch.chdir(tmp_path)
    directory = MemberDirectory({
        "n1": Member(Address("127.0.0.1", 7001), Address("127.0.0.1", 8001)),
        "n3": Member(Address("127.0.0.1", 7003), Address("127.0.0.1", 8003)),
    })
    heard: list[object] = []
    directory.on_remove(lambda node_id: heard.append(("removed", node_id)))
    directory.on_change(lambda: heard.append(("changed", sorted(directory.members()))))
    log = Log(FileStoreStateMachine(directory))

    def no_write(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"apply wrote or scheduled a write: {args}")

    with monkeypatch.context() as m:
        for target in ("os.open", "builtins.open", "storg.storage.fsutil.atomic_write",
                       "twisted.internet.threads.deferToThread"):
            m.setattr(target, no_write)
        log.raw(ConfChange(ConfChangeType.REMOVE, "n3").encode(), EntryType.CONF_CHANGE)
    assert heard == [("removed", "n3"), ("changed", ["n1"])]
    assert list(tmp_path.iterdir()) == []


def test_without_a_directory_members_are_still_tracked() -> None:
    log = Log()
    context = CODEC.encode(MemberAddress("n2", "127.0.0.1:7002", "127.0.0.1:8002"))
    log.raw(ConfChange(ConfChangeType.ADD_LEARNER, "n2", context).encode(), EntryType.CONF_CHANGE)
    assert set(log.fsm.directory.members()) == {"n2"}


# --- queries -----------------------------------------------------------------------------

LS_PATHS = ["/a", "/a/b", "/a/b/c", "/a/z", "/ab", "/a-b", "/a.txt", "/a!", "/b/a", "/0"]


@pytest.fixture
def tree(log: Log) -> Log:
    for i, path in enumerate(LS_PATHS):
        log(put(path, fresh(i)))
    return log


@pytest.mark.parametrize("prefix, expected", [
    ("/a", ["/a", "/a/b", "/a/b/c", "/a/z"]),
    ("a", ["/a", "/a/b", "/a/b/c", "/a/z"]),
    ("/a/b", ["/a/b", "/a/b/c"]),
    ("/b", ["/b/a"]),
    ("/ab", ["/ab"]),
    ("/zz", []),
    ("/a/b/c/d", []),
    ("/", sorted(LS_PATHS)),
    ("", sorted(LS_PATHS)),
])
def test_list_is_files_at_or_below_a_folder(tree: Log, prefix: str, expected: list[str]) -> None:
    files = tree.fsm.list(prefix)
    assert [f.path for f in files] == expected
    assert files == [tree.fsm.get(p) for p in expected]
    bare = tree.fsm.list(prefix, with_chunks=False)
    assert [f.path for f in bare] == expected and all(f.chunks == () for f in bare)
    assert [(f.size, f.sha256, f.version) for f in bare] == [(f.size, f.sha256, f.version) for f in files]


@pytest.mark.parametrize("prefix", ["/a/", "//", "/a/../b"])
def test_list_refuses_an_invalid_prefix(tree: Log, prefix: str) -> None:
    with pytest.raises(InvalidPath):
        tree.fsm.list(prefix)


def test_list_after_removals_and_many_files(log: Log) -> None:
    paths = [f"/d{i % 7}/f{i:05d}" for i in range(3000)]
    for i, path in enumerate(paths):
        log(put(path, fresh(i, 1)))
    for path in paths[::3]:
        log(rm(path))
    kept = [p for i, p in enumerate(paths) if i % 3]
    assert [f.path for f in log.fsm.list("/d3", with_chunks=False)] == sorted(p for p in kept if p.startswith("/d3/"))
    assert [f.path for f in log.fsm.list("/", with_chunks=False)] == sorted(kept)


def test_get_and_chunk_of_unknown_or_malformed_keys(log: Log) -> None:
    assert log.fsm.get("/nothing") is None
    assert log.fsm.chunk(h(1)) is None
    assert log.fsm.chunk("not hex") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.text("ab/", max_size=5)), max_size=200), st.text("ab/", max_size=4))
def test_sorted_path_index_matches_a_sorted_set(ops: list[tuple[bool, str]], start: str) -> None:
    index = SortedPaths(load=3)
    model: set[str] = set()
    for add, key in ops:
        if add and key not in model:
            index.add(key)
            model.add(key)
        elif not add and key in model:
            index.remove(key)
            model.discard(key)
        assert list(index) == sorted(model)
    assert list(index.from_key(start)) == sorted(k for k in model if k >= start)
    assert list(SortedPaths(sorted(model), load=3)) == sorted(model)
