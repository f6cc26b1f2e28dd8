"""Who the members are and where they listen: replicated, so every node agrees.

Addresses come from the config's ``cluster`` section for the initial
members and from committed membership changes (their ``context`` is a
``MemberAddress`` frame) for the rest.  Which incarnation of each member a
node trusts is that node's own observation, not replicated state: see
:mod:`storg.server.peer_instances`, which watches removals here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from storg.config import Member, NodeConfig, parse_address
from storg.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from storg.wire import CODEC, CodecError, MemberAddress

log = Logger(namespace="storg.members")

KNOWN_INSTANCES_FILE = "peer_instances.json"


class MemberDirectory:
    def __init__(self, members: dict[str, Member]) -> None:
        self._members = dict(members)
        self._watchers: list[Callable[[], object]] = []
        self._removal_watchers: list[Callable[[str], object]] = []

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

    def on_remove(self, watcher: Callable[[str], object]) -> None:
        """Call ``watcher(node_id)`` when a member is removed (before the change watchers)."""
        self._removal_watchers.append(watcher)

    def add(self, node_id: str, member: Member) -> None:
        self._members[node_id] = member
        self._changed()

    def remove(self, node_id: str) -> None:
        self._members.pop(node_id, None)
        for watcher in list(self._removal_watchers):
            watcher(node_id)
        self._changed()

    def _changed(self) -> None:
        for watcher in list(self._watchers):
            watcher()


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

