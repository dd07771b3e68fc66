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
