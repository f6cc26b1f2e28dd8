"""``storgctl scrub``: one node's upkeep counters in one reply, and a way to start a pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storg.node.raft_node import RaftNode
from storg.server.files.garbage import GarbageCollector
from storg.server.upkeep.repair import Repairer
from storg.server.upkeep.scrub import Scrubber
from storg.wire.files import ScrubStatusReply, ScrubStatusRequest


class UpkeepStatus:
    """Answers ScrubStatusRequest from the scrubber's, the repairer's and garbage's counters."""

    def __init__(self, node: RaftNode, scrubber: Scrubber, repairer: Repairer,
                 garbage: GarbageCollector) -> None:
        self.node = node
        self.scrubber = scrubber
        self.repairer = repairer
        self.garbage = garbage

    def handlers(self) -> dict[type, Callable[..., Any]]:
        return {ScrubStatusRequest: self.scrub_status}

    def scrub_status(self, req: ScrubStatusRequest, conn: object = None) -> ScrubStatusReply:
        """This node's scrub and repair counters; ``start`` begins a pass.

        Under-replication is the leader's last repair round's count when it
        has run one (it knows who is reachable), else this node's last scrub.
        """
        scrub = self.scrubber
        if req.start:
            scrub.start_pass()
        counts = scrub.counters
        repairer = self.repairer
        under = repairer.under_replicated if self.node.is_leader() and repairer.rounds \
            else scrub.under_replicated
        garbage = self.garbage.stats
        return ScrubStatusReply(
            req.request_id, self.node.node_id, scrub.running, counts["passes"],
            counts["chunks_checked"], counts["bytes_checked"], counts["bad_copies"],
            counts["missing_copies"], counts["repairs_done"] + repairer.counters["copies"],
            under, garbage["chunks_collected"], garbage["orphans_removed"])
