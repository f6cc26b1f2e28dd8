"""Instance ids: the node's service records and forgets them; applying an entry writes no file."""

from __future__ import annotations

import json

from twisted.internet import defer

from storg.config import Address, Member
from storg.fsm.machine import FileStoreStateMachine
from storg.fsm.members import MemberDirectory
from storg.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from storg.server.peer_instances import KNOWN_INSTANCES_FILE, KnownInstances

MEMBERS = {nid: Member(Address("127.0.0.1", 7000 + i), Address("127.0.0.1", 8000 + i))
           for i, nid in enumerate(["n1", "n2", "n3"], start=1)}


def run_inline(fn, *args) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args)


def remove_entry(node_id: str, index: int = 5) -> Entry:
    return Entry(1, index, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE, node_id).encode())


def test_the_first_instance_is_kept_and_a_new_one_refused_with_the_fix(tmp_path):
    instances = KnownInstances(MemberDirectory(MEMBERS), tmp_path, run_inline)
    assert instances.check("n2", "aaaa") is None
    assert instances.check("n2", "aaaa") is None
    reason = instances.check("n2", "bbbb")
    assert reason is not None and "came back with an empty data_dir" in reason
    assert "storgctl member remove n2" in reason
    assert "storgctl member add n2 --peer 127.0.0.1:7002 --client 127.0.0.1:8002" in reason
    assert json.loads((tmp_path / KNOWN_INSTANCES_FILE).read_text()) == {"n2": "aaaa"}


def test_known_instances_survive_a_restart(tmp_path):
    KnownInstances(MemberDirectory(MEMBERS), tmp_path, run_inline).check("n3", "cccc")
    again = KnownInstances(MemberDirectory(MEMBERS), tmp_path, run_inline)
    assert again.known() == {"n3": "cccc"}
    assert again.check("n3", "dddd") is not None


def test_applying_a_removal_writes_no_file_and_the_service_side_forgets(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    directory = MemberDirectory(MEMBERS)
    fsm = FileStoreStateMachine(directory)
    # Apply with no one watching: nothing appears anywhere under tmp_path.
    fsm.apply(remove_entry("n3"))
    assert "n3" not in directory.members()
    assert list(tmp_path.rglob("*")) == [state_dir]

    node_dir = tmp_path / "node"
    node_dir.mkdir()
    directory = MemberDirectory(MEMBERS)
    fsm = FileStoreStateMachine(directory)
    writes = []

    def recording(fn, *args):
        writes.append(fn)
        return run_inline(fn, *args)

    instances = KnownInstances(directory, node_dir, recording)
    instances.check("n2", "aaaa")
    assert len(writes) == 1
    fsm.apply(remove_entry("n2"))
    # The removal reached the service's watcher, which forgot n2 and wrote through its executor.
    assert instances.known() == {} and len(writes) == 2
    assert json.loads((node_dir / KNOWN_INSTANCES_FILE).read_text()) == {}
    assert instances.check("n2", "bbbb") is None  # a replaced member is welcome again
