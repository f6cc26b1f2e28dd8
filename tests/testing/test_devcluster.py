"""The test clusters' port picking: ports that no outgoing connection can take first."""

from __future__ import annotations

import random
import socket

from storg.testing import devcluster
from storg.testing.devcluster import ephemeral_range, free_port


def test_free_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = [free_port("127.0.0.1", random.Random(7)) for _ in range(50)]
    assert len(set(ports)) == 50  # the same seed each time: repeats are skipped, not returned
    for port in ports:
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_picked(monkeypatch) -> None:
    class Fixed(random.Random):
        """Offers the busy port first, then a second one."""

        def __init__(self, choices: list[int]) -> None:
            super().__init__(0)
            self.choices = choices

        def choice(self, seq):
            return self.choices.pop(0)

    pool = devcluster._port_pool()
    busy_port, other = pool.start + 17, pool.start + 18
    monkeypatch.setattr(devcluster, "_handed_out", set())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", busy_port))
        busy.listen()
        assert free_port("127.0.0.1", Fixed([busy_port, other])) == other


def test_the_pool_avoids_the_kernel_range(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "ip_local_port_range"
    fake.write_text("15000\t60999\n")
    monkeypatch.setattr(devcluster, "_EPHEMERAL_RANGE_FILE", fake)
    assert devcluster._port_pool() == range(10000, 15000)
    fake.write_text("1024 40000\n")
    assert devcluster._port_pool() == range(40001, 65536)
