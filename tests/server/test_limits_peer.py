"""Peer-port limits over real loopback TCP: inbound connections capped, refusals logged rarely."""

from __future__ import annotations

import pytest_twisted

from tests.server.test_peer import (  # noqa: F401 (nodes and warnings are fixtures)
    frame,
    good_hello,
    msg,
    nodes,
    raw_connect,
    wait_for,
    warnings,
)


@pytest_twisted.ensureDeferred
async def test_inbound_connections_past_the_limit_are_closed_and_members_still_connect(
        nodes, warnings) -> None:  # noqa: F811 (fixtures)
    n1, n2 = nodes("n1"), nodes("n2")
    n1.transport.max_connections = 3
    squatters = [await raw_connect(n1) for _ in range(3)]
    for k, raw in enumerate(squatters):  # handshaken: never evicted
        raw.transport.write(frame(good_hello(f"r{k}")))
    await wait_for(lambda: len(n1.transport.inbound_peers()) == 3, "three handshaken connections")

    extra = [await raw_connect(n1) for _ in range(8)]
    await wait_for(lambda: all(raw.is_closed for raw in extra), "connections over the limit closed")
    assert n1.transport.refused_connections == 8
    assert not any(raw.is_closed for raw in squatters)
    lines = [line for line in warnings if "refusing peer connection" in line]
    assert len(lines) == n1.transport.drops.lines, lines  # rate-limited: the rest are counted
    assert n1.transport.drops.suppressed_total == 8 - n1.transport.drops.lines

    # A member gets in as soon as a slot is free; existing links never suffer.
    squatters[0].transport.loseConnection()
    await wait_for(lambda: len(n1.transport._inbound) == 2, "a slot freed")
    n2.connect_to(n1)
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}, "the member's connection")
    assert n2.transport.send(msg("n2", "n1", 4))
    await wait_for(lambda: n1.received, "delivery from the member")
    for raw in squatters[1:]:
        raw.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_protocol_violations_are_logged_at_a_limited_rate(nodes, warnings) -> None:  # noqa: F811
    n1 = nodes("n1")
    for _ in range(9):
        raw = await raw_connect(n1)
        raw.transport.write(b"\x00\x00\x00\x03\xff\xff\xff")
        await wait_for(lambda raw=raw: raw.is_closed, "the bad connection closed")
    lines = [line for line in warnings if "closed: undecodable frame" in line]
    assert len(lines) == n1.transport.drops.lines, lines
    n1.transport.drops.stop()
    assert any("... and 4 more" in line for line in warnings), warnings


@pytest_twisted.ensureDeferred
async def test_a_member_evicts_connections_that_never_handshake(nodes, warnings) -> None:  # noqa: F811
    n1, n2 = nodes("n1"), nodes("n2")
    n1.transport.max_connections = 3
    silent = [await raw_connect(n1) for _ in range(3)]
    await wait_for(lambda: len(n1.transport._inbound) == 3, "three silent connections counted")
    n2.connect_to(n1)
    await wait_for(lambda: n2.transport.connected_peers() == {"n1"}, "the member gets in")
    await wait_for(lambda: silent[0].is_closed, "the oldest silent connection evicted")
    assert not silent[1].is_closed and not silent[2].is_closed
    assert n1.transport.refused_connections == 0
    assert n2.transport.send(msg("n2", "n1", 5))
    await wait_for(lambda: n1.received, "delivery from the member")
    for raw in silent[1:]:
        raw.transport.loseConnection()
