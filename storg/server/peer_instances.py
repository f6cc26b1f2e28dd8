"""Which incarnation of each peer this node trusts: the instance ids it has seen, kept on disk.

Instance ids protect Raft's votes: a node whose data_dir was wiped comes
back with a new instance id, having forgotten whom it voted for and what it
acknowledged.  Letting it vote again could elect a leader that lacks
committed entries, so peers remember the first instance id they saw for
each member and refuse a different one until the operator replaces the
member (remove, then add), which forgets the old id.

This is node-local state, not replicated state: what a node has seen
depends on whom it has talked to, so it lives in the server layer and the
state machine never writes it (its ``apply`` must not touch files).  The
service forgets a removed member's id by watching the member directory
(:meth:`~storg.fsm.members.MemberDirectory.on_remove`).  The file is
``data_dir/peer_instances.json``, a JSON object of node id -> instance id,
rewritten whole with :func:`~storg.storage.fsutil.atomic_write` off the
reactor thread.

Only members are recorded.  ``is_member`` (by default: the member
directory knows the id; the service also counts the core's latest
configuration, so a node whose addition is appended but not yet applied
here is a member) decides; a Hello naming anyone else is refused and
nothing is written, so a stranger can neither grow the file nor claim the
id of a node that will be added later (which would then be refused as
"came back with an empty data_dir").  A node waiting to join is refused by
the members until the entry adding it reaches them; its connection is
retried every second, so it is accepted about a second later.

A refusal names no instance id we trust: the reason goes to whoever sent
the Hello, and the id it would need to pass as that member is ours to keep.
The operator's log line on this node has the full story.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from storg.config import Member
from storg.node.executor import Submit
from storg.storage.fsutil import atomic_write

log = Logger(namespace="storg.members")
"""The namespace the refusal has always been logged under, so operators' log filters keep matching."""

KNOWN_INSTANCES_FILE = "peer_instances.json"



class KnownInstances:
    """The first instance id seen for each peer; refuses a peer that comes back as another.

    ``members`` gives the current member addresses (for the refusal's
    instructions).  ``path`` None keeps the ids in memory only.  Writes go
    through ``run_in_thread`` one at a time, in order, each one writing the
    ids as they are when it starts, so the file never goes back to an older
    state.  Used on the reactor thread only.
    """

    def __init__(self, members: Callable[[], Mapping[str, Member]], path: Path | None = None,
                 known: Mapping[str, str] | None = None, *,
                 run_in_thread: Submit, is_member: Callable[[str], bool] | None = None) -> None:
        self._members = members
        self._is_member = is_member if is_member is not None else (lambda nid: nid in members())
        self._path = path
        self._known: dict[str, str] = dict(known or {})
        self._run_in_thread = run_in_thread
        self._writing: defer.Deferred | None = None
        self._dirty = False

    @classmethod
    def load(cls, data_dir: Path, members: Callable[[], Mapping[str, Member]], *,
             run_in_thread: Submit, is_member: Callable[[str], bool] | None = None) -> KnownInstances:
        """The ids recorded in ``data_dir`` (none if the file is absent), saved back there."""
        path = Path(data_dir) / KNOWN_INSTANCES_FILE
        try:
            known = dict(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            known = {}
        return cls(members, path, known, run_in_thread=run_in_thread, is_member=is_member)

    def known(self) -> dict[str, str]:
        """node id -> the instance id trusted for it, as a copy."""
        return dict(self._known)

    def check(self, node_id: str, instance_id: str) -> str | None:
        """None to accept the peer, or the reason to refuse it (sent to the peer: no secrets)."""
        if not self._is_member(node_id):
            # Logged by the transport, once per peer and reason, not once per retry.
            return (f"{node_id} is not a member of this cluster (a node being added is accepted "
                    f"once the entry adding it has reached this node)")
        known = self._known.get(node_id)
        if known is None:
            self._known[node_id] = instance_id
            self._save()
            return None
        if known == instance_id:
            return None
        member = self._members().get(node_id)
        add = (f"storgctl member add {node_id} --peer {member.peer} --client {member.client}"
               if member is not None else f"storgctl member add {node_id} --peer H:P --client H:P")
        steps = (f"it has forgotten its votes and log and may not vote. To replace it: "
                 f"`storgctl member remove {node_id}`, then `{add}`, then start {node_id} with "
                 f"`join: true`")
        log.warn("refusing peer: {node} came back with an empty data_dir (instance {instance}, "
                 "was {known}): {steps}", node=node_id, instance=instance_id, known=known, steps=steps)
        return f"{node_id} came back with an empty data_dir (instance {instance_id}): {steps}"

    def forget(self, node_id: str) -> None:
        """Trust whichever instance of ``node_id`` comes next (it was removed from the cluster)."""
        if self._known.pop(node_id, None) is not None:
            self._save()

    def flushed(self) -> defer.Deferred:
        """Fires once every change so far is on disk (or its write has failed and been logged)."""
        if self._writing is None:
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()

        def then(result: object) -> object:
            self.flushed().chainDeferred(done)  # _written ran first: a newer write may be under way
            return result

        self._writing.addBoth(then)
        return done

    def _save(self) -> None:
        if self._path is None:
            return
        self._dirty = True
        if self._writing is None:
            self._write_next()

    def _write_next(self) -> None:
        self._dirty = False
        data = json.dumps(self._known, sort_keys=True).encode("utf-8")
        d = defer.maybeDeferred(self._run_in_thread, atomic_write, self._path, data)
        d.addErrback(lambda f: log.failure("could not record peer instance ids", f))
        self._writing = d
        d.addBoth(self._written)

    def _written(self, _: object) -> None:
        self._writing = None
        if self._dirty:
            self._write_next()
