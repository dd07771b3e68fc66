from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.dataplane.routes import (
    bfs_parents,
    broadcast_children,
    symmetric_graph,
    unicast_next_hops,
)

NAMES = [bytes([2, 0, 0, 0, 0, i]) for i in range(6)]


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


def random_graph(rng: random.Random, n: int, p: float) -> dict[bytes, set[bytes]]:
    names = [i.to_bytes(6, "big") for i in range(n)]
    g: dict[bytes, set[bytes]] = {x: set() for x in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if rng.random() < p:
                g[a].add(b)
                g[b].add(a)
    return g


def distances(
    g: dict[bytes, set[bytes]], src: bytes, leaves: frozenset[bytes] = frozenset()
) -> dict[bytes, int]:
    """Hop counts from ``src`` over paths whose inner peers are no ``leaves``."""
    dist = {src: 0}
    q = deque([src])
    while q:
        x = q.popleft()
        if x in leaves and x != src:
            continue
        for y in g[x]:
            if y not in dist:
                dist[y] = dist[x] + 1
                q.append(y)
    return dist


def roles(
    rng: random.Random, g: dict[bytes, set[bytes]]
) -> tuple[frozenset[bytes], frozenset[bytes]]:
    leaves = frozenset(x for x in g if rng.random() < 0.3)
    preferred = frozenset(x for x in g if x not in leaves and rng.random() < 0.3)
    return leaves, preferred


@settings(max_examples=60)
@given(st.integers(0, 10_000), st.integers(2, 14), st.floats(0.05, 0.6))
def test_hop_by_hop_routes_pass_no_peer_that_never_relays(seed: int, n: int, p: float) -> None:
    """Every peer routing on its own over the same graph and roles: a frame
    follows shortest paths among those with no leaf inside, reaches its
    destination, and no leaf passes it on; with no roles, routes are as before."""
    rng = random.Random(seed)
    g = random_graph(rng, n, p)
    leaves, preferred = roles(rng, g)
    table = {x: unicast_next_hops(g, x, leaves, preferred) for x in g}
    for me in g:
        assert unicast_next_hops(g, me, frozenset(), frozenset()) == unicast_next_hops(g, me)
        dist = distances(g, me, leaves)
        assert set(table[me]) == set(dist) - {me}
        for dst in table[me]:
            x, steps = me, 0
            while x != dst:
                assert x == me or x not in leaves
                nxt = table[x][dst]
                assert nxt in g[x]
                assert distances(g, nxt, leaves).get(dst) == (distances(g, x, leaves)[dst] - 1)
                x, steps = nxt, steps + 1
            assert steps == dist[dst]


@settings(max_examples=60)
@given(st.integers(0, 10_000), st.integers(1, 14), st.floats(0.05, 0.6))
def test_broadcast_with_relay_roles_reaches_each_once_and_no_leaf_forwards(
    seed: int, n: int, p: float
) -> None:
    rng = random.Random(seed)
    g = random_graph(rng, n, p)
    leaves, preferred = roles(rng, g)
    for origin in g:
        received: dict[bytes, int] = {origin: 1}
        q = deque([origin])
        while q:
            x = q.popleft()
            children = broadcast_children(g, origin, x, leaves, preferred)
            if x != origin and x in leaves:
                assert children == []
            for child in children:
                received[child] = received.get(child, 0) + 1
                q.append(child)
        assert set(received) == set(distances(g, origin, leaves))
        assert set(received.values()) == {1}


def test_a_preferred_relay_wins_a_tie_and_a_leaf_is_gone_around() -> None:
    me, a, b, dst = NAMES[:4]
    g = {me: {a, b}, a: {me, dst}, b: {me, dst}, dst: {a, b}}
    assert unicast_next_hops(g, me)[dst] == a  # the smaller name, by default
    assert unicast_next_hops(g, me, frozenset(), frozenset({b}))[dst] == b
    assert unicast_next_hops(g, me, frozenset({a}))[dst] == b
    assert unicast_next_hops(g, me, frozenset({a, b})) == {a: a, b: b}  # dst: no route
    assert unicast_next_hops(g, a, frozenset({a}))[dst] == dst  # a leaf routes its own
