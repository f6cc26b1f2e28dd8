"""Who the members are, where they listen, and which incarnation of each we trust.

Addresses come from the config's ``cluster`` section for the initial
members and from committed membership changes (their ``context`` is a
``MemberAddress`` frame) for the rest, so every node agrees on them.

Instance ids protect Raft's votes: a node whose data_dir was wiped comes
back with a new instance id, having forgotten whom it voted for and what it
acknowledged.  Letting it vote again could elect a leader that lacks
committed entries, so peers remember the first instance id they saw for
each member and refuse a different one until the operator replaces the
member (remove, then add), which forgets the old id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from storg.config import Member, NodeConfig, parse_address
from storg.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from storg.storage.fsutil import atomic_write
from storg.wire import CODEC, CodecError, MemberAddress

log = Logger(namespace="storg.members")

KNOWN_INSTANCES_FILE = "peer_instances.json"


class MemberDirectory:
    def __init__(self, members: dict[str, Member]) -> None:
        self._members = dict(members)
        self._known_instances: dict[str, str] = {}
        self._instances_path: Path | None = None
        self._watchers: list[Callable[[], object]] = []
        self._write_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: NodeConfig) -> MemberDirectory:
        members = dict(config.cluster)
        members.setdefault(config.node_id, Member(config.peer_listen, config.client_listen))
        return cls(members)

    def members(self) -> dict[str, Member]:
        return dict(self._members)

    def peers(self, self_id: str) -> dict[str, Member]:
        return {nid: m for nid, m in self._members.items() if nid != self_id}

    def on_change(self, watcher: Callable[[], object]) -> None:
        self._watchers.append(watcher)

    def add(self, node_id: str, member: Member) -> None:
        self._members[node_id] = member
        self._changed()

    def remove(self, node_id: str) -> None:
        self._members.pop(node_id, None)
        self.forget_instance(node_id)
        self._changed()

    def _changed(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    # -- instance ids --------------------------------------------------------

    def load_known_instances(self, data_dir: Path) -> None:
        self._instances_path = Path(data_dir) / KNOWN_INSTANCES_FILE
        try:
            self._known_instances = dict(json.loads(self._instances_path.read_text("utf-8")))
        except FileNotFoundError:
            self._known_instances = {}

    def check_instance(self, node_id: str, instance_id: str) -> str | None:
        """None to accept the peer, or the reason to refuse it."""
        known = self._known_instances.get(node_id)
        if known is None:
            self._known_instances[node_id] = instance_id
            self._save_instances()
            return None
        if known == instance_id:
            return None
        member = self._members.get(node_id)
        add = (f"storgctl member add {node_id} --peer {member.peer} --client {member.client}"
               if member is not None else f"storgctl member add {node_id} --peer H:P --client H:P")
        reason = (
            f"{node_id} came back with an empty data_dir (instance {instance_id}, was {known}): "
            f"it has forgotten its votes and log and may not vote. To replace it: "
            f"`storgctl member remove {node_id}`, then `{add}`, then start {node_id} with `join: true`"
        )
        log.warn("refusing peer: {reason}", reason=reason)
        return reason

    def forget_instance(self, node_id: str) -> None:
        if self._known_instances.pop(node_id, None) is not None:
            self._save_instances()

    def _save_instances(self) -> None:
        if self._instances_path is None:
            return
        data = json.dumps(self._known_instances, sort_keys=True).encode("utf-8")
        path = self._instances_path
        from twisted.internet.threads import deferToThread

        def write() -> None:
            with self._write_lock:
                atomic_write(path, data)

        deferToThread(write).addErrback(
            lambda f: log.failure("could not record peer instance ids", f))


class MembershipStateMachine:
    """Applies membership entries (CONF_CHANGE) to the directory.

    The file store's state machine owns one and hands it those entries.
    """

    def __init__(self, directory: MemberDirectory) -> None:
        self.directory = directory

    def apply(self, entry: Entry) -> Any:
        if entry.type != EntryType.CONF_CHANGE:
            raise ValueError(f"entry {entry.index} is not a membership change")
        cc = ConfChange.decode(entry.data)
        if cc.type == ConfChangeType.REMOVE:
            self.directory.remove(cc.node_id)
            return None
        if cc.context:
            try:
                addr = CODEC.decode(cc.context)
            except CodecError:
                addr = None
            if isinstance(addr, MemberAddress) and addr.id == cc.node_id:
                self.directory.add(cc.node_id, Member(parse_address(addr.peer), parse_address(addr.client)))
        return None

