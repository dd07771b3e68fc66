from __future__ import annotations

from meshrouter.dataplane.pmtu import PROBE_SIZES, SAFE_DATAGRAM
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


def test_a_probe_lost_in_a_burst_costs_heartbeats_not_a_probe_interval() -> None:
    """The 1472-byte probe of the first round is lost (a busy receiver, a lossy
    link): the size settles lower, the larger sizes are tried again on the next
    heartbeats, and the next one that gets through raises it.  On a path that
    really is smaller, the tries end after GROWTH_TRIES rounds."""
    from meshrouter.dataplane.pmtu import GROWTH_TRIES

    a, b = session_pair()
    probes = a.heartbeats(0.0, probe=True)
    deliver(b, [p for p in probes if len(p) != 1472], 0.0)  # the largest one lost
    deliver(a, b.heartbeats(0.5, probe=False), 0.5)
    assert a.datagram_size == 1452
    assert a.pmtu.wants_probe()
    deliver(b, a.heartbeats(1.0, probe=a.pmtu.wants_probe()), 1.0)  # this round gets through
    deliver(a, b.heartbeats(1.5, probe=False), 1.5)
    assert a.datagram_size == 1472
    assert not a.pmtu.wants_probe()  # the largest: nothing left to grow to

    c, d = session_pair()
    deliver(d, [p for p in c.heartbeats(0.0, probe=True) if len(p) <= 1400], 0.0)
    deliver(c, d.heartbeats(0.5, probe=False), 0.5)
    assert c.datagram_size == 1400
    rounds = 0
    while c.pmtu.wants_probe():
        deliver(d, [p for p in c.heartbeats(1.0 + rounds, probe=True) if len(p) <= 1400], 1.0)
        rounds += 1
    assert rounds == GROWTH_TRIES
    assert c.datagram_size == 1400
