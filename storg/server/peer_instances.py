"""Which incarnation of each member this node trusts: instance ids, kept in ``peer_instances.json``.

Instance ids protect Raft's votes: a node whose data_dir was wiped comes
back with a new instance id, having forgotten whom it voted for and what it
acknowledged.  Letting it vote again could elect a leader that lacks
committed entries, so this node remembers the first instance id it saw for
each member and refuses a different one until the operator replaces the
member (remove, then add), which forgets the old id.

This is the node's own observation, not replicated state: the state
machine only announces that a member was removed
(:meth:`~storg.fsm.members.MemberDirectory.on_remove`), and this class,
owned by the node's service, forgets and persists.  Applying an entry never
writes a file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from twisted.logger import Logger

from storg.fsm.members import MemberDirectory
from storg.node.executor import Submit
from storg.storage.fsutil import atomic_write

log = Logger(namespace="storg.members")

KNOWN_INSTANCES_FILE = "peer_instances.json"


class KnownInstances:
    """The instance id first seen for each member, persisted off the reactor after each change."""

    def __init__(self, directory: MemberDirectory, data_dir: Path, run: Submit) -> None:
        self.directory = directory
        self.path = Path(data_dir) / KNOWN_INSTANCES_FILE
        self.run = run
        """Runs the file writes off the reactor thread."""
        self._write_lock = threading.Lock()
        try:
            self._known: dict[str, str] = dict(json.loads(self.path.read_text("utf-8")))
        except FileNotFoundError:
            self._known = {}
        directory.on_remove(self.forget)

    def known(self) -> dict[str, str]:
        return dict(self._known)

    def check(self, node_id: str, instance_id: str) -> str | None:
        """None to accept the peer, or the reason to refuse it."""
        known = self._known.get(node_id)
        if known is None:
            self._known[node_id] = instance_id
            self._save()
            return None
        if known == instance_id:
            return None
        member = self.directory.members().get(node_id)
        add = (f"storgctl member add {node_id} --peer {member.peer} --client {member.client}"
               if member is not None else f"storgctl member add {node_id} --peer H:P --client H:P")
        reason = (
            f"{node_id} came back with an empty data_dir (instance {instance_id}, was {known}): "
            f"it has forgotten its votes and log and may not vote. To replace it: "
            f"`storgctl member remove {node_id}`, then `{add}`, then start {node_id} with `join: true`"
        )
        log.warn("refusing peer: {reason}", reason=reason)
        return reason

    def forget(self, node_id: str) -> None:
        """A member was removed: a node of that id is a new member when it is added again."""
        if self._known.pop(node_id, None) is not None:
            self._save()

    def _save(self) -> None:
        data = json.dumps(self._known, sort_keys=True).encode("utf-8")
        path = self.path

        def write() -> None:
            with self._write_lock:  # writes may overlap in the pool; the last one taken wins
                atomic_write(path, data)

        self.run(write).addErrback(lambda f: log.failure("could not record peer instance ids", f))
