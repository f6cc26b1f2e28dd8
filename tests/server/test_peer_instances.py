"""KnownInstances: the peer instance ids a node trusts, kept in data_dir/peer_instances.json.

The state machine no longer writes this file: a committed member removal
reaches it only through the directory's removal watcher, which the service
wires to :meth:`KnownInstances.forget`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from storg.config import Address, Member, load_config
from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.members import MemberDirectory
from storg.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from storg.server.peer_instances import KNOWN_INSTANCES_FILE, KnownInstances
from storg.wire.messages import Hello

MEMBERS = {
    "n1": Member(Address("127.0.0.1", 7001), Address("127.0.0.1", 8001)),
    "n2": Member(Address("127.0.0.1", 7002), Address("::1", 8002)),
}


def run_now(fn, *args) -> defer.Deferred:
    """A run_in_thread that runs on the spot, so a test reads the file right after."""
    return defer.maybeDeferred(fn, *args)


class HeldWrites:
    """A run_in_thread that holds each write until the test lets it run."""

    def __init__(self) -> None:
        self.held: list[tuple[object, tuple, defer.Deferred]] = []

    def __call__(self, fn, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.held.append((fn, args, d))
        return d

    def run_next(self) -> None:
        fn, args, d = self.held.pop(0)
        d.callback(fn(*args))


def on_disk(data_dir: Path) -> dict[str, str]:
    return json.loads((data_dir / KNOWN_INSTANCES_FILE).read_text("utf-8"))


@pytest.fixture
def warnings():
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn:
            seen.append(f"{event.get('log_namespace')}: {formatEvent(event)}")

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def test_the_first_instance_seen_is_trusted_and_recorded(tmp_path: Path) -> None:
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now)
    assert known.known() == {}
    assert known.check("n2", "i-1") is None
    assert on_disk(tmp_path) == {"n2": "i-1"}
    assert known.check("n2", "i-1") is None
    assert known.check("n1", "i-9") is None
    assert (tmp_path / KNOWN_INSTANCES_FILE).read_bytes() == b'{"n1": "i-9", "n2": "i-1"}'


def test_a_new_instance_is_refused_with_the_steps_to_replace_it(tmp_path: Path, warnings) -> None:
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now)
    known.check("n2", "i-1")
    reason = known.check("n2", "i-2")
    steps = ("it has forgotten its votes and "
             "log and may not vote. To replace it: `storgctl member remove n2`, then "
             "`storgctl member add n2 --peer 127.0.0.1:7002 --client [::1]:8002`, then start n2 with `join: true`")
    # The peer is told what to do, but not which instance id we trust (it would let anyone pass as n2).
    assert reason == f"n2 came back with an empty data_dir (instance i-2): {steps}"
    assert warnings == [f"storg.members: refusing peer: n2 came back with an empty data_dir "
                        f"(instance i-2, was i-1): {steps}"]
    assert on_disk(tmp_path) == {"n2": "i-1"}  # a refusal changes nothing
    assert known.check("n2", "i-2") == reason


def test_a_refused_peer_the_directory_does_not_know_gets_placeholder_addresses(tmp_path: Path) -> None:
    # A member the directory has no address for yet (its addition is appended, not applied).
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now,
                                is_member=lambda nid: True)
    known.check("n7", "i-1")
    reason = known.check("n7", "i-2")
    assert "`storgctl member add n7 --peer H:P --client H:P`, then start n7 with `join: true`" in reason


def test_an_existing_data_dir_file_is_read(tmp_path: Path) -> None:
    (tmp_path / KNOWN_INSTANCES_FILE).write_text('{"n1": "a", "n2": "b"}', "utf-8")
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=run_now)
    assert known.known() == {"n1": "a", "n2": "b"}
    assert known.check("n2", "b") is None
    assert known.check("n2", "c") is not None


def test_forget_trusts_the_next_instance_and_persists(tmp_path: Path) -> None:
    writes = HeldWrites()
    (tmp_path / KNOWN_INSTANCES_FILE).write_text('{"n1": "a", "n2": "b"}', "utf-8")
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=writes)
    known.forget("n9")
    assert writes.held == []  # nothing to forget, nothing written
    known.forget("n2")
    writes.run_next()
    assert on_disk(tmp_path) == {"n1": "a"}
    assert known.check("n2", "c") is None
    writes.run_next()
    assert on_disk(tmp_path) == {"n1": "a", "n2": "c"}


def test_writes_go_one_at_a_time_and_the_last_state_wins(tmp_path: Path) -> None:
    writes = HeldWrites()
    known = KnownInstances.load(tmp_path, lambda: MEMBERS, run_in_thread=writes)
    known.check("n1", "a")
    known.check("n2", "b")
    known.forget("n1")
    assert len(writes.held) == 1  # the later changes wait for the write under way
    flushed = known.flushed()
    writes.run_next()
    assert on_disk(tmp_path) == {"n1": "a"} and not flushed.called
    assert len(writes.held) == 1  # both later changes, in one write of the state as it is now
    writes.run_next()
    assert on_disk(tmp_path) == {"n2": "b"}
    assert writes.held == [] and flushed.called


def test_a_failed_write_is_logged_and_later_changes_still_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "not yet"
    known = KnownInstances.load(data_dir, lambda: MEMBERS, run_in_thread=run_now)
    assert known.check("n1", "a") is None  # the folder does not exist: the write fails, logged
    assert known.flushed().called
    data_dir.mkdir()
    known.check("n2", "b")
    assert on_disk(data_dir) == {"n1": "a", "n2": "b"}


def test_a_member_removal_applied_forgets_its_instance_through_the_server_only(tmp_path: Path) -> None:
    """Applying REMOVE writes nothing itself; the server's watcher forgets and persists the id."""
    (tmp_path / KNOWN_INSTANCES_FILE).write_text('{"n1": "a", "n2": "b"}', "utf-8")
    before = sorted(tmp_path.iterdir())
    writes = HeldWrites()
    directory = MemberDirectory(MEMBERS)
    known = KnownInstances.load(tmp_path, directory.members, run_in_thread=writes)
    fsm = FileStoreStateMachine(directory)

    remove_n1 = ConfChange(ConfChangeType.REMOVE, "n1").encode()
    fsm.apply(Entry(1, 1, EntryType.CONF_CHANGE, remove_n1))
    assert writes.held == [] and sorted(tmp_path.iterdir()) == before  # unwired: nothing at all

    directory.on_remove(known.forget)  # as NodeService wires it
    remove_n2 = ConfChange(ConfChangeType.REMOVE, "n2").encode()
    fsm.apply(Entry(1, 2, EntryType.CONF_CHANGE, remove_n2))
    assert on_disk(tmp_path) == {"n1": "a", "n2": "b"}  # apply returned without writing
    assert known.known() == {"n1": "a"}
    writes.run_next()  # the server's write, off apply's path
    assert on_disk(tmp_path) == {"n1": "a"}
    assert known.check("n2", "new") is not None  # removed: no longer a member
    directory.add("n2", MEMBERS["n2"])  # added again (its ADD_LEARNER applied)
    assert known.check("n2", "new") is None


@pytest_twisted.ensureDeferred
async def test_the_service_refuses_a_changed_peer_and_forgets_a_removed_one(tmp_path: Path) -> None:
    from storg.server.service import NodeService

    config_path = tmp_path / "n1.yaml"
    config_path.write_text(yaml.safe_dump({
        "node_id": "n1", "data_dir": "data", "peer_listen": "127.0.0.1:7001",
        "client_listen": "127.0.0.1:8001",
        "cluster": {nid: {"peer": str(m.peer), "client": str(m.client)} for nid, m in MEMBERS.items()},
    }), "utf-8")
    node = NodeService(load_config(config_path))
    node.open_storage()
    try:
        data_dir = tmp_path / "data"
        hello = Hello(1, node.cluster_id, "n2", "i-1")
        assert node._accept_peer(hello) is None
        await node.known_instances.flushed()
        assert on_disk(data_dir) == {"n2": "i-1"}
        assert "came back with an empty data_dir" in node._accept_peer(Hello(1, node.cluster_id, "n2", "i-2"))
        node.directory.remove("n2")  # what applying a committed REMOVE does
        await node.known_instances.flushed()
        assert on_disk(data_dir) == {}
        assert "not a member" in node._accept_peer(Hello(1, node.cluster_id, "n2", "i-2"))
        node.directory.add("n2", MEMBERS["n2"])  # added again
        assert node._accept_peer(Hello(1, node.cluster_id, "n2", "i-2")) is None
        await node.known_instances.flushed()
    finally:
        node.log_store.close()
