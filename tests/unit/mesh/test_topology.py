from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.mesh.topology import (
    RELAY_NEVER,
    RELAY_PREFER,
    ConnInfo,
    Gossip,
    PeerRecord,
    decode_records_untrusted,
    encode_records,
    merge,
)

NAMES = [bytes([2, 0, 0, 0, 0, i]) for i in range(6)]

conn_st = st.builds(
    ConnInfo,
    peer=st.sampled_from(NAMES),
    address=st.sampled_from(["198.18.0.1:6783", "198.18.0.2:6783", ""]),
    established=st.booleans(),
    outbound=st.booleans(),
    relay=st.integers(0, 3),
)
record_st = st.builds(
    PeerRecord,
    name=st.sampled_from(NAMES),
    uid=st.integers(0, 3),
    version=st.integers(0, 5),
    nickname=st.sampled_from(["a", "b", "ü"]),
    connections=st.lists(conn_st, max_size=3).map(lambda cs: tuple(sorted(cs))),
)
records_st = st.lists(record_st, max_size=12)


def merged(*batches: list[PeerRecord]) -> dict[bytes, PeerRecord]:
    out: dict[bytes, PeerRecord] = {}
    for b in batches:
        merge(out, b)
    return out


@given(records_st, records_st)
def test_merge_commutative(a: list[PeerRecord], b: list[PeerRecord]) -> None:
    assert merged(a, b) == merged(b, a)


@given(records_st, records_st, records_st)
def test_merge_associative(a: list[PeerRecord], b: list[PeerRecord], c: list[PeerRecord]) -> None:
    left = merged(list(merged(a, b).values()), c)
    right = merged(a, list(merged(b, c).values()))
    assert left == right


@given(records_st)
def test_merge_idempotent_and_order_free(a: list[PeerRecord]) -> None:
    once = merged(a)
    assert merged(a, a) == once
    assert merged(list(reversed(a))) == once
    assert merge(dict(once), a) == []


@given(records_st)
def test_encoding_roundtrip(a: list[PeerRecord]) -> None:
    assert decode_records_untrusted(encode_records(a)) == a


@given(st.binary(max_size=300))
def test_decode_garbage_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_records_untrusted(data)


@given(records_st, st.integers(0, 400), st.binary(max_size=20))
def test_decode_mutated_raises_only_bad_packet(a: list[PeerRecord], pos: int, noise: bytes) -> None:
    data = bytearray(encode_records(a))
    data[pos % len(data) : pos % len(data) + len(noise)] = noise
    with contextlib.suppress(BadPacket):
        decode_records_untrusted(bytes(data))


ME = bytes([2, 0, 0, 0, 0, 99])


@given(st.lists(records_st, max_size=4), st.integers(0, 400), st.binary(max_size=20))
def test_gossip_that_skips_records_it_holds_merges_as_a_full_decode_does(
    batches: list[list[PeerRecord]], pos: int, noise: bytes
) -> None:
    """The receiver leaves out records whose bytes are those of the record it
    holds: after any batches, some resent and one mangled, it holds what a
    plain decode-and-merge holds, and refuses what that refuses."""
    g = Gossip(ME, 1, "me")
    reference: dict[bytes, PeerRecord] = dict(g.records)
    sent = [encode_records(b) for b in batches]
    sent += [g.encode(reference.values()), *sent]  # our own encodings come back too
    for i, payload in enumerate(sent):
        if i == len(sent) - 1 and payload:
            data = bytearray(payload)
            data[pos % len(data) : pos % len(data) + len(noise)] = noise
            payload = bytes(data)
        try:
            expect = decode_records_untrusted(payload)
        except BadPacket:
            refused = False
            try:
                g.receive_records_untrusted(payload)
            except BadPacket:
                refused = True
            assert refused, "the skipping decoder took a payload the full one refuses"
            continue
        merge(reference, [r for r in expect if r.name != ME])
        g.receive_records_untrusted(payload)
        assert {n: r for n, r in g.records.items() if n != ME} == {
            n: r for n, r in reference.items() if n != ME
        }
    assert decode_records_untrusted(g.full()) == list(g.records.values())


# -- routes against a brute-force reference ---------------------------------------


# -- the gossip core ------------------------------------------------------------------


def test_gossip_spreads_and_routes_follow() -> None:
    a, b, c = (Gossip(NAMES[i], 100 + i, f"h{i}") for i in range(3))

    # a - b - c in a line.
    def link(x: Gossip, *peers: Gossip) -> bytes | None:
        return x.set_connections(
            ConnInfo(p.me, f"198.18.0.{p.me[-1]}:6783", True, True) for p in peers
        )

    link(a, b)
    link(b, a, c)
    link(c, b)
    for _ in range(3):  # full exchange along the edges
        for x, y in ((a, b), (b, a), (b, c), (c, b)):
            y.receive_untrusted(x.full())
    for g in (a, b, c):
        assert set(g.records) == {a.me, b.me, c.me}
    assert a.routes().next_hop == {b.me: b.me, c.me: b.me}
    assert a.routes().children(a.me) == [b.me]
    assert b.routes().children(a.me) == [c.me]
    assert c.routes().children(a.me) == []
    assert a.addresses_of(c.me) == {"198.18.0.2:6783"}
    # Updates that change nothing are not passed on.
    assert b.receive_untrusted(a.full()) is None


def test_a_peer_that_never_relays_is_gone_around_and_still_known() -> None:
    """a - b - c in a line and a - d - c beside it; b says it never relays:
    a's route to c goes through d; with d gone, c has no route from a but
    stays known (its record is not collected).  A copy of b's record that a
    release before 0.2 passed on (the role's bits dropped, same version)
    loses the merge, whichever comes first."""
    a, b, c, d = (Gossip(NAMES[i], 100 + i, f"h{i}") for i in range(4))

    def link(x: Gossip, *peers: Gossip, role: int = 0) -> None:
        conns = [ConnInfo(p.me, f"198.18.0.{p.me[-1]}:6783", True, True) for p in peers]
        if role:
            conns.append(ConnInfo(x.me, "", False, False, role))
        x.set_connections(conns)

    link(a, b, d)
    link(b, a, c, role=RELAY_NEVER)
    link(c, b, d)
    link(d, a, c)
    for _ in range(3):
        for x in (a, b, c, d):
            for y in (a, b, c, d):
                y.receive_untrusted(x.full())
    assert a.records[b.me].relay_role() == RELAY_NEVER
    assert a.routes().next_hop[c.me] == d.me
    assert a.routes().children(a.me) == [b.me, d.me]
    assert a.routes().children(c.me) == []  # c's broadcasts come to a through d
    assert d.routes().children(c.me) == [a.me]
    assert b.routes().children(a.me) == []  # b never passes one on
    assert "" not in a.addresses_of(b.me)  # the role's entry is nothing to dial
    link(a, b)  # d gone from a's side
    for _ in range(2):
        for x in (a, b):
            for y in (a, b):
                y.receive_untrusted(x.full())
    assert c.me not in a.routes().next_hop
    assert c.me in a.reachable()
    assert a.gc(1000.0) == []
    stripped = PeerRecord(
        b.me,
        b.own.uid,
        b.own.version,
        b.own.nickname,
        tuple(
            sorted(
                ConnInfo(x.peer, x.address, x.established, x.outbound) for x in b.own.connections
            )
        ),
    )
    for order in ([b.own, stripped], [stripped, b.own]):
        held = merged(order)
        assert held[b.me].relay_role() == RELAY_NEVER


def test_a_preferred_relay_carries_the_tie() -> None:
    a, b, c, d = (Gossip(NAMES[i], 100 + i, f"h{i}") for i in range(4))
    roles = {d.me: RELAY_PREFER}
    for x, peers in ((a, (b, d)), (b, (a, c)), (c, (b, d)), (d, (a, c))):
        conns = [ConnInfo(p.me, "", True, True) for p in peers]
        if x.me in roles:
            conns.append(ConnInfo(x.me, "", False, False, roles[x.me]))
        x.set_connections(conns)
    for _ in range(3):
        for x in (a, b, c, d):
            for y in (a, b, c, d):
                y.receive_untrusted(x.full())
    assert a.routes().next_hop[c.me] == d.me  # b by name, d by preference
    assert c.routes().next_hop[a.me] == d.me


def test_restarted_peer_jumps_above_its_old_record() -> None:
    old = Gossip(NAMES[0], 1, "h0")
    for i in range(5):
        old.set_connections([ConnInfo(NAMES[1], f"x:{i}", True, True)])
    other = Gossip(NAMES[1], 2, "h1")
    other.receive_untrusted(old.full())
    new = Gossip(NAMES[0], 99, "h0")  # restarted: version 1 again
    fwd = new.receive_untrusted(other.full())
    assert fwd is not None
    assert new.own.version > old.own.version
    other.receive_untrusted(fwd)
    assert other.records[NAMES[0]].uid == 99


def test_gc_forgets_unreachable_after_grace() -> None:
    a, b = Gossip(NAMES[0], 1, "a", gc_after=10), Gossip(NAMES[1], 2, "b")
    a.receive_untrusted(b.full())
    assert a.gc(0.0) == []
    assert a.gc(9.9) == []
    assert a.gc(10.0) == [NAMES[1]]
    assert NAMES[1] not in a.records


def test_simulated_mesh_of_120_peers_converges_despite_loss() -> None:
    from tools.gossipsim import simulate

    report = simulate(120, loss=0.05, seed=1)
    print(report)
    assert report.converged_at is not None
    assert report.lost > 0  # the loss really happened and was recovered from
    # A lost message is mended by the next digest round (every 30 s), and a
    # mend can be lost too: this seeded run needs three.
    assert report.converged_at < 100


def test_simulation_is_reproducible_from_its_seed() -> None:
    # trio shuffles the order of runnable tasks; the simulation must not depend on it
    # (CI once saw 97 s where a local run saw 39 s for the same seed).
    from tools.gossipsim import simulate

    first, second = simulate(40, loss=0.05, seed=3), simulate(40, loss=0.05, seed=3)
    assert first == second


def test_simulation_without_loss_converges_from_updates_alone() -> None:
    from tools.gossipsim import simulate

    report = simulate(60, loss=0.0, seed=2)
    assert report.converged_at is not None
    assert report.converged_at < 5  # no periodic round needed
