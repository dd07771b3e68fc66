from __future__ import annotations

import contextlib
import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.errors import BadPacket
from meshrouter.routes import bfs_parents, broadcast_children, symmetric_graph, unicast_next_hops
from meshrouter.topology import (
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


# -- routes against a brute-force reference ---------------------------------------


def random_graph(rng: random.Random, n: int, p: float) -> dict[bytes, set[bytes]]:
    names = [i.to_bytes(6, "big") for i in range(n)]
    g: dict[bytes, set[bytes]] = {x: set() for x in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if rng.random() < p:
                g[a].add(b)
                g[b].add(a)
    return g


def distances(g: dict[bytes, set[bytes]], src: bytes) -> dict[bytes, int]:
    dist = {src: 0}
    q = deque([src])
    while q:
        x = q.popleft()
        for y in g[x]:
            if y not in dist:
                dist[y] = dist[x] + 1
                q.append(y)
    return dist


@settings(max_examples=60)
@given(st.integers(0, 10_000), st.integers(2, 14), st.floats(0.05, 0.6))
def test_unicast_next_hop_is_on_a_shortest_path(seed: int, n: int, p: float) -> None:
    g = random_graph(random.Random(seed), n, p)
    for me in g:
        hops = unicast_next_hops(g, me)
        dist_me = distances(g, me)
        assert set(hops) == set(dist_me) - {me}
        for dst, hop in hops.items():
            assert hop in g[me]
            assert distances(g, hop)[dst] == dist_me[dst] - 1


@settings(max_examples=60)
@given(st.integers(0, 10_000), st.integers(1, 14), st.floats(0.05, 0.6))
def test_broadcast_reaches_every_reachable_peer_exactly_once(seed: int, n: int, p: float) -> None:
    g = random_graph(random.Random(seed), n, p)
    for origin in g:
        received: dict[bytes, int] = {origin: 1}
        q = deque([origin])
        while q:
            x = q.popleft()
            for child in broadcast_children(g, origin, x):
                assert child in g[x]  # only over real edges
                received[child] = received.get(child, 0) + 1
                q.append(child)
        assert set(received) == set(distances(g, origin))
        assert set(received.values()) == {1}


def test_symmetric_graph_drops_one_sided_edges() -> None:
    a, b, c = NAMES[:3]
    g = symmetric_graph({a: {b, c}, b: {a}, c: set()})
    assert g == {a: {b}, b: {a}, c: set()}
    assert bfs_parents(g, a) == {a: None, b: a}


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


def test_targets_backoff_jitter_cap_and_discovery() -> None:
    from meshrouter.targets import MAX_DELAY, Targets

    t = Targets(6783)
    t.add("198.18.0.1", 0.0)
    (due,) = t.due(0.0)
    assert due.address == "198.18.0.1:6783"
    assert t.due(0.0) == []  # connecting: not due again
    now, delays = 0.0, []
    for _ in range(12):
        t.failed(due.address, "refused", now, jitter=1.0)
        delays.append(due.next_try - now)
        now = t.next_deadline()
        assert t.due(now) == [due]
    assert delays[0] == 0.5
    assert delays[1] == 0.75
    assert max(delays) == MAX_DELAY
    t.failed(due.address, "refused", now, jitter=0.5)
    assert due.next_try - now == MAX_DELAY * 0.5
    assert due.last_error == "refused"
    t.connected(due.address, b"peer")
    assert due.state == "connected"
    # Discovered targets come and go with the topology; operator ones stay.
    t.sync_discovered({"198.18.0.2:6783"}, now)
    assert {x.address for x in t if x.discovered} == {"198.18.0.2:6783"}
    t.sync_discovered(set(), now)
    assert [x.address for x in t] == ["198.18.0.1:6783"]
    t.sync_discovered({"198.18.0.3:6783"}, now)
    t.add("198.18.0.3", now)  # the operator adopts it
    t.sync_discovered(set(), now)
    assert sorted(x.address for x in t) == ["198.18.0.1:6783", "198.18.0.3:6783"]


def test_split_address_errors() -> None:
    import pytest

    from meshrouter.targets import split_address

    assert split_address("[fd00::1]:7000", 6783) == ("fd00::1", 7000)
    assert split_address("host", 6783) == ("host", 6783)
    for bad in ("", "h:0", "h:99999", "h:x", "[fd00::1", "a b"):
        with pytest.raises(ValueError, match=r"peer address|empty"):
            split_address(bad, 6783)


def test_simulated_mesh_of_120_peers_converges_despite_loss() -> None:
    from tools.gossipsim import simulate

    report = simulate(120, loss=0.05, seed=1)
    print(report)
    assert report.converged_at is not None
    assert report.lost > 0  # the loss really happened and was recovered from
    # Anti-entropy runs every 30 s, so even an unlucky loss is mended within two rounds.
    assert report.converged_at < 90


def test_simulation_without_loss_converges_from_updates_alone() -> None:
    from tools.gossipsim import simulate

    report = simulate(60, loss=0.0, seed=2)
    assert report.converged_at is not None
    assert report.converged_at < 5  # no periodic round needed
