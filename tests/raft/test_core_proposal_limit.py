"""The proposal limit: an entry that could not fit one APPEND is refused, and batching never
builds an APPEND over the peer frame limit from entries under it."""

from __future__ import annotations

import pytest
from test_core_helpers import MT, Net, drain

from storg.config import MAX_PROPOSAL_LIMIT
from storg.raft.core import RaftConfig
from storg.raft.errors import ProposalDropped, ProposalTooLarge
from storg.raft.types import Entry, Message
from storg.wire import CODEC, MAX_FRAME_BYTES, CodecError, ProbeCommand, ProbeWrite


def test_a_command_over_the_limit_is_refused_and_the_log_keeps_committing() -> None:
    net = Net("abc", config=RaftConfig(max_entry_bytes=1000))
    a = net.elect("a")
    last = a.last_index
    with pytest.raises(ProposalTooLarge, match="1001 bytes is over the proposal limit of 1000") as info:
        a.propose(b"x" * 1001)
    assert not isinstance(info.value, ProposalDropped)  # "never", not "later": no retry
    assert a.last_index == last, "nothing appended"
    index = a.propose(b"y" * 1000)
    net.pump()
    assert a.commit_index == index == last + 1
    net.tick(1)  # followers learn the commit index from the next heartbeat
    assert all(core.commit_index == index for core in net.cores.values())


def test_followers_refuse_it_too_instead_of_redirecting() -> None:
    net = Net("abc", config=RaftConfig(max_entry_bytes=10))
    net.elect("a")
    with pytest.raises(ProposalTooLarge):
        net.cores["b"].propose(b"x" * 11)


def test_a_probe_just_under_the_client_frame_limit_cannot_become_an_entry() -> None:
    # The hole of issue 15: this payload fits one client frame, but the entry made
    # of it would make an APPEND over the peer frame limit, which could never commit.
    payload = b"p" * (MAX_FRAME_BYTES - 14)  # the largest one client frame carries
    assert len(CODEC.encode(ProbeWrite(1, payload))) <= MAX_FRAME_BYTES
    command = CODEC.encode(ProbeCommand(payload))
    append = Message(MT.APPEND, "a", "b", term=1, index=1, log_term=1, entries=(Entry(1, 2, data=command),))
    with pytest.raises(CodecError):
        CODEC.encode(append)  # why: such an entry could never be sent to a follower
    net = Net("abc", config=RaftConfig(max_entry_bytes=MAX_PROPOSAL_LIMIT))
    a = net.elect("a")
    with pytest.raises(ProposalTooLarge):
        a.propose(command)


def _appends(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if m.type == MT.APPEND]


def test_every_append_of_entries_under_the_limit_fits_a_peer_frame() -> None:
    """Entries at the limit, small ones between them, the longest node ids and the genesis meta."""
    big = "n" * 64
    ids = [big, "b" * 64, "c" * 64]
    net = Net(ids, config=RaftConfig(max_entry_bytes=MAX_PROPOSAL_LIMIT))
    leader = net.elect(big)
    # An APPEND from index 0 (a fresh follower) carries the membership too: make it large.
    sizes = [MAX_PROPOSAL_LIMIT, 100, 300_000, MAX_PROPOSAL_LIMIT, MAX_PROPOSAL_LIMIT - 1] + [5000] * 400
    for size in sizes:
        leader.propose(b"e" * size)
    largest = 0
    for _ in range(50):
        msgs = drain(leader)
        for m in _appends(msgs):
            body = CODEC.encode(m)  # raises CodecError over MAX_FRAME_BYTES
            largest = max(largest, len(body))
        net.deliver(msgs)
        net.pump()
        if leader.commit_index == leader.last_index:
            break
    assert leader.commit_index == leader.last_index, "everything committed"
    assert MAX_PROPOSAL_LIMIT < largest <= MAX_FRAME_BYTES


def test_genesis_append_with_the_limit_entry_encodes() -> None:
    """The first APPEND to a joiner (index 0, with the membership meta) and an entry at the limit."""
    net = Net([f"{k:0>64}" for k in range(3)], config=RaftConfig(max_entry_bytes=MAX_PROPOSAL_LIMIT))
    leader = net.elect("0" * 64)
    leader.propose(b"z" * MAX_PROPOSAL_LIMIT)
    genesis = [m for m in _appends(drain(leader)) if m.index == 0]
    for m in genesis:
        assert len(CODEC.encode(m)) <= MAX_FRAME_BYTES
