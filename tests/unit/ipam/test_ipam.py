from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.ipam.reclaim import Reclaimer
from meshrouter.ipam.ring import (
    CLAIM_NOT_OWNER,
    CLAIM_OK,
    CLAIM_TAKEN,
    Ipam,
    NoSpace,
    NotReady,
    decode_untrusted,
    encode_claim,
    encode_claim_reply,
    encode_donate,
    encode_ring,
)

P = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 6)]
RANGE = "10.32.0.0/26"  # 64 addresses: small enough to run out


def mesh(n: int, cidr: str = RANGE) -> list[Ipam]:
    peers = [Ipam(P[i], cidr, init_count=n, settle=0) for i in range(n)]
    ring = peers[0].maybe_init(set(P[:n]), 0.0)
    assert ring is not None
    for p in peers[1:]:
        p.receive_ring_untrusted(ring)
    return peers


def gossip_all(peers: list[Ipam]) -> None:
    for _ in range(2):
        for a in peers:
            for b in peers:
                if a is not b:
                    b.receive_ring_untrusted(encode_ring(a.tokens))


def test_only_the_lowest_peer_with_a_quorum_makes_the_ring() -> None:
    a, b, c = (Ipam(P[i], RANGE, init_count=3, settle=2.0) for i in range(3))
    assert a.maybe_init({P[0]}, 0.0) is None  # 1 of 3: no quorum
    assert (
        b.maybe_init({P[1], P[2]}, 0.0) is None
    )  # b is not the lowest it sees? it is, but must settle
    assert b.maybe_init({P[1], P[2]}, 1.0) is None
    assert c.maybe_init({P[0], P[1], P[2]}, 9.0) is None  # never: c is not the lowest
    assert a.maybe_init({P[0], P[1]}, 10.0) is None  # quorum reached now; settling
    ring = a.maybe_init({P[0], P[1]}, 12.0)
    assert ring is not None
    assert {o for _, _, o in a.intervals()} == {P[0], P[1]}
    assert a.maybe_init({P[0], P[1]}, 13.0) is None  # once


def test_allocate_release_no_space_and_donation() -> None:
    a, b = mesh(2)
    got = [a.allocate(f"a/{i}") for i in range(31)]  # lower half: 32 addresses less the network one
    assert len(set(got)) == 31
    assert all(a.owner_of(x) == P[0] for x in got)
    with pytest.raises(NoSpace):
        a.allocate("a/more")
    ring = b.donate(P[0], None)
    assert ring is not None
    a.receive_ring_untrusted(ring)
    extra = a.allocate("a/more")
    assert a.owner_of(extra) == P[0]
    assert b.owner_of(extra) == P[0]
    assert a.release("a/more") == [extra]
    assert a.allocate("a/0") == got[0]  # asking again gives the same answer


def test_claims_and_reserved_addresses() -> None:
    a, b = mesh(2)
    net = int(ipaddress.IPv4Address("10.32.0.0"))
    assert a.claim(net, "x") == CLAIM_TAKEN  # the network address
    assert a.claim(net + 5, "x") == CLAIM_OK
    assert a.claim(net + 5, "y") == CLAIM_TAKEN
    assert a.claim(net + 5, "x") == CLAIM_OK  # idempotent
    assert b.claim(net + 5, "z") == CLAIM_NOT_OWNER
    assert b.claim(net + 63, "z") == CLAIM_TAKEN  # the broadcast address


def test_subnet_allocation() -> None:
    (a,) = mesh(1, "10.32.0.0/12")
    sub = ipaddress.IPv4Network("10.40.1.0/24")
    x = a.allocate("c1", sub)
    assert ipaddress.IPv4Address(x) == ipaddress.IPv4Address("10.40.1.1")
    assert ipaddress.IPv4Address(a.allocate("c2", sub)) == ipaddress.IPv4Address("10.40.1.2")


def test_rmpeer_takes_the_dead_peers_share() -> None:
    a, b, _ = mesh(3)
    n, ring = a.rmpeer(P[2])
    assert n == 1
    assert ring is not None
    b.receive_ring_untrusted(ring)
    assert {o for _, _, o in b.intervals()} == {P[0], P[1]}
    assert a.rmpeer(P[2]) == (0, None)


def test_not_ready_before_the_ring() -> None:
    with pytest.raises(NotReady):
        Ipam(P[0], RANGE).allocate("x")


OPS = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "release", "donate", "gossip", "claim"]),
        st.integers(0, 4),
        st.integers(0, 4),
        st.integers(0, 63),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_interleavings_never_duplicate_and_never_leak(
    ops: list[tuple[str, int, int, int]],
) -> None:
    peers = mesh(5)
    held: dict[str, tuple[int, int]] = {}  # ident -> (peer, addr)
    base = peers[0].start
    for k, (op, i, j, off) in enumerate(ops):
        p = peers[i]
        if op == "alloc":
            with contextlib.suppress(NoSpace):
                ident = f"c{k}"
                held[ident] = (i, p.allocate(ident))
        elif op == "release" and held:
            ident = sorted(held)[off % len(held)]
            owner, addr = held.pop(ident)
            assert peers[owner].release(ident) == [addr]
        elif op == "donate" and i != j:
            ring = p.donate(peers[j].me, None)
            if ring is not None:
                peers[j].receive_ring_untrusted(ring)
        elif op == "gossip" and i != j:
            peers[j].receive_ring_untrusted(encode_ring(p.tokens))
        elif op == "claim":
            ident = f"k{k}"
            if p.claim(base + off, ident) == CLAIM_OK:
                held[ident] = (i, base + off)
        # Invariant: no address is held twice anywhere in the mesh, and every
        # peer's allocations lie in what that peer believes it owns.
        everything = [a for q in peers for a in q.allocs]
        assert len(everything) == len(set(everything))
        for q in peers:
            assert q.misplaced() == []
    gossip_all(peers)
    rings = {tuple(sorted(q.tokens.items())) for q in peers}
    assert len(rings) == 1  # converged
    # Every allocation still lies in its holder's share in the converged ring.
    for q in peers:
        assert q.misplaced() == []
    # Nothing leaks: releasing everything we hold empties every table.
    for ident, (owner, _) in list(held.items()):
        peers[owner].release(ident)
    assert all(not q.allocs for q in peers)


@given(st.binary(max_size=120))
def test_decode_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_untrusted(data)


def test_message_roundtrips() -> None:
    assert decode_untrusted(encode_donate(None)) == (2, (0, 0))
    assert decode_untrusted(encode_donate(ipaddress.IPv4Network("10.40.1.0/24")))[1] == (
        int(ipaddress.IPv4Address("10.40.1.0")),
        24,
    )
    assert decode_untrusted(encode_claim(7, 99, "h/c")) == (3, (7, 99, "h/c"))
    assert decode_untrusted(encode_claim_reply(7, 1, "taken")) == (4, (7, 1, "taken"))


def test_store_survives_reopen_and_refuses_another_range(tmp_path: object) -> None:
    from pathlib import Path

    from meshrouter.ipam.store import IpamStore, IpamStoreError

    path = Path(str(tmp_path)) / "ipam.db"
    (a,) = mesh(1)
    x = a.allocate("h/c1", ns_path="/run/netns/c1")
    store = IpamStore(path)
    store.save(a, {"h/c9": [(P[1], 77)]}, {"h/c9": "/run/netns/c9"}, Reclaimer(P[0], 0))
    store.close()
    b = Ipam(P[0], RANGE)
    store = IpamStore(path)
    remote, remote_ns = store.load(b, Reclaimer(P[1], 0))
    assert remote_ns == {"h/c9": "/run/netns/c9"}
    assert b.tokens == a.tokens
    assert b.allocs[x].ident == "h/c1"
    assert b.allocs[x].ns_path == "/run/netns/c1"
    assert remote == {"h/c9": [(P[1], 77)]}
    # A restarted peer keeps giving out only free addresses.
    assert b.allocate("h/c2") != x
    store.close()
    with pytest.raises(IpamStoreError, match="holds addresses of range"):
        IpamStore(path).load(Ipam(P[0], "10.99.0.0/16"), Reclaimer(P[0], 0))
