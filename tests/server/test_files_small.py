"""Small files on a node: written off the reactor after apply, yet readable and synced in order.

The chunk pool is a fake whose jobs run only when the test releases them,
and time is a task.Clock, so the test sees each moment between apply, the
batched write being issued, and the file being on disk.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer
from twisted.internet.task import Clock

from storg.fsm.machine import FileStoreStateMachine
from storg.raft.types import ConfState, Entry, EntryType
from storg.server.files.chunk_io import Chunks
from storg.server.files.placement import place
from storg.server.files.service import FileService
from storg.storage.chunks import ChunkStore
from storg.storage.errors import HashMismatchError
from storg.wire import CODEC
from storg.wire.chunks import PutInlineCommand
from storg.wire.files import GetData, GetEnd, GetRequest, GetStart


class HeldPool:
    """LocalChunks with a pool that runs nothing until ``release``."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.jobs: list[tuple[defer.Deferred, object, tuple]] = []

    def run(self, fn, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.jobs.append((d, fn, args))
        return d

    def get(self, chunk_hash: str) -> defer.Deferred:
        return self.run(self.store.get, chunk_hash)

    def release(self) -> None:
        while self.jobs:
            d, fn, args = self.jobs.pop(0)
            try:
                result = fn(*args)
            except Exception:
                d.errback()
            else:
                d.callback(result)


class NoRemote:
    timeout = 1.0

    def get(self, node_id, chunk_hash):
        return defer.fail(ConnectionRefusedError(node_id))


class FakeCore:
    conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    last_index = 0


class FakeNode:
    node_id = "n1"
    applied_index = 0
    term = 1
    leader = "n1"
    core = FakeCore()

    def on_applied(self, watcher) -> None:
        pass

    def on_role_change(self, watcher) -> None:
        pass

    def is_leader(self) -> bool:
        return True

    def read_index(self) -> defer.Deferred:
        return defer.succeed(self.applied_index)


class Conn:
    open = True

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.writes: list[list[type]] = []

    backed_up = False

    def send(self, frame) -> None:
        self.sent.append(frame)

    def send_all(self, frames) -> None:
        self.sent.extend(frames)
        self.writes.append([type(f) for f in frames])

    def writable(self) -> defer.Deferred:
        return defer.succeed(None)


def run_inline(fn, *args) -> defer.Deferred:
    """An executor that runs each call at once (the tests' stand-in for the hash pool)."""
    return defer.maybeDeferred(fn, *args)


def make(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    pool = HeldPool(store)
    fsm = FileStoreStateMachine()
    service = FileService(FakeNode(), fsm, Chunks("n1", pool, NoRemote()), replication_factor=3,
                          chunk_size=1 << 20, reactor=Clock(), hasher=run_inline)
    return service, fsm, pool, store


def apply_small(fsm, index: int, path: str, data: bytes) -> str:
    cmd = PutInlineCommand(0, 0, 1_000, path, data, ("n1", "n2", "n3"))
    fsm.apply(Entry(1, index, EntryType.NORMAL, CODEC.encode(cmd)))
    return hashlib.sha256(data).hexdigest()


def issue_batch(service) -> None:
    """Let the batch delay pass: the gathered small-file writes go to the pool."""
    service.reactor.advance(service.ops.batch_delay)


def get(service, path: str) -> list[object]:
    conn = Conn()
    d = service.get(GetRequest(1, path, False), conn)
    d.addCallback(lambda reply: None if reply is None else conn.send(reply))  # as the client port does
    return conn.sent


def test_a_small_file_is_written_off_the_reactor_and_served_from_memory_meanwhile(tmp_path):
    service, fsm, pool, store = make(tmp_path)
    h = apply_small(fsm, 1, "/s", b"small bytes")
    assert not store.has(h) and not pool.jobs  # gathered for a batch, not written on apply
    issue_batch(service)
    assert not store.has(h) and len(pool.jobs) == 1  # issued to the pool, not written yet
    sent = get(service, "/s")
    assert [type(f) for f in sent] == [GetStart, GetData, GetEnd]
    assert sent[1].data == b"small bytes"
    pool.release()
    assert store.get(h) == b"small bytes"


def test_a_small_file_at_hand_is_answered_in_one_write(tmp_path):
    """GetStart, GetData and GetEnd in one send_all: one TLS record and one send, not three."""
    service, fsm, _pool, _store = make(tmp_path)
    apply_small(fsm, 1, "/s", b"small bytes")
    conn = Conn()
    service.get(GetRequest(1, "/s", False), conn)
    assert conn.writes == [[GetStart, GetData, GetEnd]]


def test_without_the_cache_a_get_reads_after_the_queued_write(tmp_path):
    service, fsm, pool, _store = make(tmp_path)
    service.small_cache.max_bytes = 0
    apply_small(fsm, 1, "/s", b"uncached")
    sent = get(service, "/s")
    assert [type(f) for f in sent] == [GetStart]  # its data waits behind the write, no error
    issue_batch(service)
    pool.release()
    assert [type(f) for f in sent] == [GetStart, GetData, GetEnd] and sent[1].data == b"uncached"


def test_sync_before_compaction_waits_for_the_writes_already_issued(tmp_path):
    service, fsm, pool, store = make(tmp_path)
    h = apply_small(fsm, 1, "/a", b"first")
    synced = []
    service.sync_inline_chunks().addCallback(synced.append)
    pool.release()  # the write, then the fsync it was waiting for
    assert synced == [1] and store.has(h)
    again = []
    service.sync_inline_chunks().addCallback(again.append)
    assert again == [0]


def test_the_same_small_file_applied_twice_is_written_once_unless_a_delete_came_between(tmp_path):
    service, fsm, pool, store = make(tmp_path)
    h = apply_small(fsm, 1, "/a", b"same")
    apply_small(fsm, 2, "/b", b"same")
    assert len(service._inline_writes) == 1  # one write covers both
    service.ops.delete([h])
    assert not service.ops.write_queued(h)
    apply_small(fsm, 3, "/c", b"same")
    assert service.ops.write_queued(h) and len(service._inline_writes) == 2
    issue_batch(service)
    assert len(pool.jobs) == 1  # only the first write: the delete and the rewrite wait for it
    pool.release()  # write, then delete; the rewrite joins the next batch
    assert not store.has(h) and len(service._inline_writes) == 1
    issue_batch(service)
    pool.release()
    assert store.get(h) == b"same" and not service._inline_writes


def test_small_files_applied_together_are_written_by_one_pool_job(tmp_path):
    service, fsm, pool, store = make(tmp_path)
    hashes = [apply_small(fsm, i, f"/f{i}", b"file %d" % i) for i in range(1, 6)]
    issue_batch(service)
    assert len(pool.jobs) == 1
    pool.release()
    assert [store.get(h) for h in hashes] == [b"file %d" % i for i in range(1, 6)]
    assert not service._inline_writes


def test_a_full_batch_goes_to_the_pool_without_waiting_for_the_delay(tmp_path):
    service, fsm, pool, store = make(tmp_path)
    service.ops.batch_max = 3
    apply_small(fsm, 1, "/a", b"a")
    apply_small(fsm, 2, "/b", b"b")
    assert not pool.jobs
    apply_small(fsm, 3, "/c", b"c")
    assert len(pool.jobs) == 1
    assert not service.reactor.getDelayedCalls()  # the delay's timer went with the batch


def test_one_failed_write_in_a_batch_fails_only_its_own_waiter(tmp_path):
    service, _fsm, pool, store = make(tmp_path)
    good = hashlib.sha256(b"good").hexdigest()
    d_good = service.ops.put_batched(good, b"good")
    d_bad = service.ops.put_batched(hashlib.sha256(b"other").hexdigest(), b"not the other")
    outcomes: list[object] = []
    d_good.addCallback(outcomes.append)
    d_bad.addErrback(lambda f: outcomes.append(f.type))
    issue_batch(service)
    pool.release()
    assert outcomes == [good, HashMismatchError]
    assert store.get(good) == b"good"
    assert not service.ops.busy(good)


def test_inline_holders_are_every_voter_when_the_cluster_has_r_voters_or_fewer(tmp_path):
    service, _, _, _ = make(tmp_path)
    assert service.replicator.inline_holders(b"x" * 100) == ["n1", "n2", "n3"]
    service.replication_factor = 5  # more copies wanted than voters: still each voter once
    assert service.replicator.inline_holders(b"x" * 100) == ["n1", "n2", "n3"]


def test_inline_holders_of_a_bigger_cluster_are_placed_like_any_chunk(tmp_path, monkeypatch):
    service, _, _, _ = make(tmp_path)
    monkeypatch.setattr(FakeCore, "conf", ConfState(voters=frozenset({"n1", "n2", "n3", "n4", "n5"})))
    spread = set()
    for k in range(40):
        data = b"file %d" % k
        holders = service.replicator.inline_holders(data)
        assert len(holders) == 3 and len(set(holders)) == 3
        assert set(holders) == set(place(hashlib.sha256(data).hexdigest(), ["n1", "n2", "n3", "n4", "n5"], 3,
                                          service.replicator.projected_usage(), service.unreachable()))
        spread |= set(holders)
    assert spread == {"n1", "n2", "n3", "n4", "n5"}  # rendezvous ranking spreads them


def test_a_failed_small_file_write_blocks_compaction_is_retried_and_stops_the_node_if_it_persists(tmp_path):
    """Issue 16, the second data-loss hole: a write that failed at apply was only logged, and the
    sync before compaction succeeded, so the log could drop the only copy of the bytes here."""
    from storg.server.files.service import INLINE_RETRIES, InlineWriteFailed
    from storg.storage.errors import DiskFullError

    service, fsm, pool, store = make(tmp_path)
    real_put = store.put
    broken = [True]

    def put(data, *args, **kwargs):
        if broken[0]:
            raise DiskFullError("no space left on device")
        return real_put(data, *args, **kwargs)

    store.put = put
    h = apply_small(fsm, 1, "/a", b"acknowledged")
    issue_batch(service)
    pool.release()
    assert not store.has(h)

    outcomes: list[object] = []
    service.sync_inline_chunks().addBoth(outcomes.append)
    pool.release()  # the retry fails too
    assert len(outcomes) == 1 and outcomes[0].check(InlineWriteFailed)  # no compaction after this

    stopped: list[object] = []
    service.on_holder_failure = stopped.append
    for _ in range(INLINE_RETRIES - 2):
        service.sync_inline_chunks().addErrback(lambda f: None)
        pool.release()
    assert not stopped
    service.sync_inline_chunks().addErrback(lambda f: None)
    pool.release()
    assert len(stopped) == 1  # the disk keeps failing: the node stops rather than forget

    broken[0] = False  # space came back: the next sync writes it and compaction may go on
    done: list[object] = []
    service.sync_inline_chunks().addBoth(done.append)
    pool.release()
    assert done == [0] or done == [1], done
    assert store.get(h) == b"acknowledged"


def test_a_small_file_the_snapshot_covers_but_the_store_lost_is_written_again_from_the_log(tmp_path):
    """The rest of the second hole: after a restart the snapshot's entries are not replayed, so a
    small file whose write never reached the disk is taken from the log the compaction kept."""
    from storg.server.files.inline_restore import restore_inline_chunks

    fsm = FileStoreStateMachine()
    store = ChunkStore(tmp_path / "chunks")
    cmd = PutInlineCommand(0, 0, 1_000, "/lost", b"only in the log", ("n1", "n2"))
    entry = Entry(1, 1, EntryType.NORMAL, CODEC.encode(cmd))
    fsm.apply(entry)
    other = Entry(1, 2, EntryType.NORMAL, CODEC.encode(PutInlineCommand(0, 0, 1, "/x", b"not mine", ("n2",))))
    fsm.apply(other)
    assert restore_inline_chunks([entry, other], fsm, store, "n1") == 1
    assert store.get(hashlib.sha256(b"only in the log").hexdigest()) == b"only in the log"
    assert not store.has(hashlib.sha256(b"not mine").hexdigest())
    assert restore_inline_chunks([entry, other], fsm, store, "n1") == 0  # present now


def test_small_files_in_put_object_and_conditional_commands_are_restored_too(tmp_path):
    """Every put since ETags is a PutObjectCommand wrapping the put: the restore looks inside it
    (and inside the older ConditionalPutCommand)."""
    from storg.server.files.inline_restore import restore_inline_chunks
    from storg.wire.objects import ObjectAttrs, PutObjectCommand
    from storg.wire.tree import ConditionalPutCommand

    fsm = FileStoreStateMachine()
    store = ChunkStore(tmp_path / "chunks")
    wrapped = PutObjectCommand(False, "", "", ObjectAttrs(hashlib.md5(b"wrapped").hexdigest()),
                               CODEC.encode(PutInlineCommand(0, 0, 1, "/w", b"wrapped", ("n1",))))
    conditional = ConditionalPutCommand(True, "", CODEC.encode(PutInlineCommand(0, 0, 2, "/c", b"cond", ("n1",))))
    entries = [Entry(1, 1, EntryType.NORMAL, CODEC.encode(wrapped)),
               Entry(1, 2, EntryType.NORMAL, CODEC.encode(conditional))]
    for entry in entries:
        fsm.apply(entry)
    assert restore_inline_chunks(entries, fsm, store, "n1") == 2
    assert store.get(hashlib.sha256(b"wrapped").hexdigest()) == b"wrapped"
    assert store.get(hashlib.sha256(b"cond").hexdigest()) == b"cond"


def test_the_small_files_of_a_put_r_batch_are_restored_too(tmp_path):
    """put -r stores most small files in batch entries (PutInlineBatchCommand): the restore looks inside."""
    from storg.server.files.inline_restore import restore_inline_chunks
    from storg.wire.batch import PutInlineBatchCommand
    from storg.wire.objects import ObjectAttrs, PutObjectCommand

    fsm = FileStoreStateMachine()
    store = ChunkStore(tmp_path / "chunks")
    files = {"/t/a": b"first small file", "/t/b": b"second small file", "/t/c": b"held elsewhere"}
    bodies = tuple(CODEC.encode(PutObjectCommand(False, "", "", ObjectAttrs(hashlib.md5(data).hexdigest()),
                                                 CODEC.encode(PutInlineCommand(0, 0, 1, path, data,
                                                                               ("n2",) if path == "/t/c" else
                                                                               ("n1", "n2")))))
                   for path, data in files.items())
    entry = Entry(1, 1, EntryType.NORMAL, CODEC.encode(PutInlineBatchCommand(5, 1, bodies)))
    fsm.apply(entry)
    assert restore_inline_chunks([entry], fsm, store, "n1") == 2
    for path in ("/t/a", "/t/b"):
        assert store.get(hashlib.sha256(files[path]).hexdigest()) == files[path]
    assert not store.has(hashlib.sha256(files["/t/c"]).hexdigest())
