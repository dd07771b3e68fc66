"""Dead peers taken over by quorum: the sans-IO rules (``meshrouter.ipam.reclaim``)
and the take-over itself (``Ipam.take_over``).  No network, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.ipam.reclaim import (
    AllocSet,
    Reclaimer,
    acks_needed,
    decode_ack_untrusted,
    decode_allocs_untrusted,
    encode_ack,
    encode_allocs,
    majority,
)
from meshrouter.ipam.ring import ALLOCS, Ipam, decode_untrusted

P = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 8)]


@pytest.mark.parametrize(
    ("owners", "majority_", "acks"),
    [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3)],
)
def test_acknowledgers_and_takers_always_meet(owners: int, majority_: int, acks: int) -> None:
    assert majority(owners) == majority_
    assert acks_needed(owners) == acks
    # Any majority without the allocator includes one of its acknowledgers.
    assert acks + majority_ > owners - 1


def test_allocation_sets_round_trip() -> None:
    held = {0x0A200001: "02:00:00:00:00:01/web", 0x0A200002: "x" * 300}
    raw = encode_allocs(P[0], 7, held)
    got = decode_allocs_untrusted(raw)
    assert got.owner == P[0]
    assert got.version == 7
    assert got.allocs == {0x0A200001: held[0x0A200001], 0x0A200002: "x" * 200}
    assert decode_untrusted(raw) == (ALLOCS, got)
    assert decode_ack_untrusted(encode_ack(P[1], 9)) == (P[1], 9)


@given(st.binary(max_size=80))
def test_allocation_set_parsers_raise_only_bad_packet(data: bytes) -> None:
    for parse in (decode_allocs_untrusted, decode_ack_untrusted, decode_untrusted):
        try:
            parse(bytes([6]) + data)
            parse(bytes([7]) + data)
        except BadPacket:
            pass


@given(st.integers(min_value=1, max_value=60))
def test_truncated_allocation_sets_are_refused(cut: int) -> None:
    raw = encode_allocs(P[0], 1, {1: "a/b", 2: "a/c"})
    with pytest.raises(BadPacket):
        decode_allocs_untrusted(raw[: max(0, len(raw) - cut)])


def test_only_the_lowest_reachable_owner_with_a_majority_acts_and_only_after_the_time() -> None:
    owners = set(P[:5])
    a, b, d = (Reclaimer(p, 100.0) for p in (P[0], P[1], P[3]))
    majority_side = {P[0], P[1], P[2]}
    assert a.observe(0.0, owners, majority_side) == []
    assert a.observe(99.0, owners, majority_side) == []
    assert a.observe(100.0, owners, majority_side) == [P[3], P[4]]
    # The second-lowest on the same side waits for the lowest.
    b.observe(0.0, owners, majority_side)
    assert b.observe(500.0, owners, majority_side) == []
    # The minority side never acts, however long it waits.
    d.observe(0.0, owners, {P[3], P[4]})
    assert d.observe(10_000.0, owners, {P[3], P[4]}) == []


def test_being_reachable_again_restarts_the_clock_and_zero_means_never() -> None:
    owners = set(P[:3])
    a = Reclaimer(P[0], 100.0)
    a.observe(0.0, owners, {P[0], P[1]})
    a.observe(90.0, owners, set(P[:3]))  # P[2] came back for a moment
    assert a.observe(91.0, owners, {P[0], P[1]}) == []
    assert a.observe(190.0, owners, {P[0], P[1]}) == []
    assert a.observe(191.0, owners, {P[0], P[1]}) == [P[2]]
    off = Reclaimer(P[0], 0)
    off.observe(0.0, owners, {P[0], P[1]})
    assert off.observe(10_000.0, owners, {P[0], P[1]}) == []
    assert off.needed(owners) == 0


def test_an_allocation_counts_as_recorded_once_enough_other_owners_acked_it() -> None:
    owners = set(P[:5])
    a = Reclaimer(P[0], 100.0)
    v = a.bump()
    assert a.needed(owners) == 2
    assert not a.recorded(v, owners)
    assert a.on_ack(P[1], P[0], v)
    assert not a.on_ack(P[1], P[0], v)  # the same again: nothing new
    assert not a.on_ack(P[2], P[1], v)  # an ack of someone else's set
    assert not a.on_ack(P[2], P[0], v + 1)  # of a version we never made
    assert a.on_ack(P[6], P[0], v)  # from a peer that owns no share ...
    assert not a.recorded(v, owners)  # ... does not count
    assert a.on_ack(P[2], P[0], v)
    assert a.recorded(v, owners)
    assert not a.recorded(a.bump(), owners)
    assert a.can_record(owners, {P[0], P[1], P[2]})
    assert not a.can_record(owners, {P[0], P[1]})
    assert a.can_record({P[0], P[1]}, {P[0]})  # two owners: no ack needed


def test_only_newer_sets_are_kept_and_resends_from_their_owner_are_acked() -> None:
    a = Reclaimer(P[0], 100.0)
    s1, s2 = AllocSet(P[1], 1, {1: "x/a"}), AllocSet(P[1], 2, {1: "x/a", 2: "x/b"})
    assert a.merge(s2)
    assert a.should_ack(s2, P[2], True)
    assert not a.merge(s1)
    assert not a.merge(s2)
    assert a.should_ack(s2, P[1], False)  # its owner sent it again
    assert not a.should_ack(s2, P[2], False)  # a copy passed on by another
    assert not a.merge(AllocSet(P[0], 9, {}))  # our own set is ours to say
    assert a.handed_out_by(P[1]) == {1: "x/a", 2: "x/b"}
    a.forget(P[1])
    assert a.handed_out_by(P[1]) == {}


def test_take_over_keeps_the_dead_peers_addresses_reserved() -> None:
    peers = [Ipam(p, "10.32.0.0/24", init_count=3, settle=0) for p in P[:3]]
    ring = peers[0].maybe_init(set(P[:3]), 0.0)
    assert ring is not None
    for q in peers[1:]:
        q.receive_ring_untrusted(ring)
    dead = peers[2]
    web = dead.allocate("02:00:00:00:00:03/web")
    db = dead.allocate("02:00:00:00:00:03/db")
    claimed = peers[0].allocate("02:00:00:00:00:01/x")  # in the taker's own share
    ranges, kept = peers[0].take_over(
        P[2], {web: "02:00:00:00:00:03/web", db: "02:00:00:00:00:03/db", claimed: "other"}
    )
    assert (ranges, sorted(kept)) == (1, sorted([web, db]))
    assert peers[0].owner_of(web) == P[0]
    assert peers[0].allocs[web].ident == "02:00:00:00:00:03/web"
    assert peers[0].allocs[claimed].ident == "02:00:00:00:00:01/x"  # untouched
    assert peers[0].take_over(P[2], {}) == (0, {})  # nothing left to take


def test_a_newer_set_frees_what_its_peer_no_longer_holds() -> None:
    d, e = "02:00:00:00:00:03/", "02:00:00:00:00:04/"
    held = {1: d + "web", 2: d + "db", 3: e + "x", 4: "02:00:00:00:00:01/mine"}
    got = Reclaimer.stale(AllocSet(P[2], 5, {1: d + "web", 7: d + "new"}), held)
    assert got == [2]  # removed while it was cut off; others' entries untouched
