"""The simulator's command line: summary line, exit status, replayable failures."""

from __future__ import annotations

import io

import pytest

from storg.raft.core import RaftCore
from storg.raft.sim.sim import main, run_seed
from storg.raft.types import NONE, MessageType


@pytest.mark.parametrize("nodes", [3, 5])
def test_thirty_seeds_without_violations(nodes):
    out = io.StringIO()
    status = main(["--seeds", "30", "--nodes", str(nodes), "--jobs", "1"], out=out)
    assert out.getvalue().splitlines()[-1] == "30 seeds, 0 violations", out.getvalue()
    assert status == 0


def test_seven_nodes_replay_one_seed():
    out = io.StringIO()
    assert main(["--seed", "3", "--nodes", "7", "--jobs", "1"], out=out) == 0
    assert out.getvalue().strip() == "1 seeds, 0 violations"


def test_a_seed_replays_identically():
    a = run_seed(11, nodes=5, steps=150)
    b = run_seed(11, nodes=5, steps=150)
    assert a == b
    assert a.stats["leaders"] >= 1 and a.stats["acked"] > 0


def test_the_chaos_actually_injects_faults():
    totals: dict[str, int] = {}
    for seed in range(6):
        for k, v in run_seed(seed, nodes=5).stats.items():
            totals[k] = totals.get(k, 0) + v
    for kind in ("crash", "restart", "partition", "heal", "compact", "installed",
                 "conf_applied", "transfer", "read_index", "refused"):
        assert totals.get(kind, 0) > 0, f"no {kind} in six seeds: {totals}"


def test_a_violation_exits_nonzero_with_seed_and_trace(monkeypatch):
    original = RaftCore._handle_vote_request

    def forgetful(self, m):   # grants a vote and forgets it: two votes per term
        original(self, m)
        if m.type == MessageType.VOTE and self.vote == m.frm:
            self.vote = NONE

    monkeypatch.setattr(RaftCore, "_handle_vote_request", forgetful)
    out = io.StringIO()
    status = main(["--seeds", "30", "--nodes", "5", "--jobs", "1"], out=out)
    text = out.getvalue()
    assert status == 1
    assert "VIOLATION: Election Safety" in text
    assert "replay: python -m storg.raft.sim --seed " in text
    assert " deliver VOTE" in text or " deliver VOTE_RESP" in text
    last = text.splitlines()[-1]
    assert last.startswith("30 seeds, ") and not last.endswith(" 0 violations")
