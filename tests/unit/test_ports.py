"""Test ports: picked where no outgoing connection can take them first."""

from __future__ import annotations

from extproc import processes


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    # A port in the ephemeral range can be taken by any client's connect()
    # between the pick and the server's bind ("Address already in use" in CI).
    low = processes._ephemeral_low()
    ports = [processes.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), [p for p in ports if p >= low]
