from __future__ import annotations

from meshrouter.pmtu import PROBE_SIZES, SAFE_DATAGRAM
from meshrouter.testing.sessions import deliver, session_pair


def test_path_mtu_probing_finds_the_largest_size_that_gets_through() -> None:
    a, b = session_pair()
    assert a.datagram_size == SAFE_DATAGRAM
    limit = 1400  # the path drops datagrams larger than this

    def path(pkts: list[bytes]) -> list[bytes]:
        return [p for p in pkts if len(p) <= limit]

    probes = a.heartbeats(0.0, probe=True)
    assert sorted({len(p) for p in probes} - {min(len(p) for p in probes)}) == sorted(PROBE_SIZES)
    deliver(b, path(probes), 0.0)
    deliver(a, b.heartbeats(0.5, probe=False), 0.5)
    assert a.pmtu.confirmed
    assert a.datagram_size == 1400
    # Once confirmed, only larger sizes are probed.
    assert max(len(p) for p in a.heartbeats(1.0, probe=True)) == 1472
    assert min(len(p) for p in a.heartbeats(1.0, probe=True)[1:]) > 1400
    # The kernel says the path shrank: back to the safe size until probes confirm again.
    a.path_too_small()
    assert a.datagram_size == SAFE_DATAGRAM
    assert not a.pmtu.confirmed
    # Sizes heard long ago are not reported back.
    assert b.heartbeats(100.0, probe=False)
    deliver(a, b.heartbeats(100.0, probe=False), 100.0)
    assert not a.pmtu.confirmed
