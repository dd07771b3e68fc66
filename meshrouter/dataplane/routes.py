"""Unicast and broadcast routes over the topology (sans-IO, pure functions).

The graph holds only *symmetric established* edges: A-B counts when A says it
has an established connection to B and B says the same of A.  Every peer
computes on the same graph with the same deterministic tie-breaking (names in
byte order), so:

* unicast: the next hop towards each destination is on a shortest path (hop
  count); the first hop of the lexicographically least BFS parent chain.
* broadcast: a frame flooded by origin O travels down the BFS tree rooted at
  O; each peer forwards it to its children in O's tree.  Since every peer
  computes the same tree, each peer receives the frame exactly once.  While
  views differ (gossip in flight) a frame may be lost or duplicated; a hop
  limit bounds any transient loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

Graph = Mapping[bytes, Set[bytes]]


def bfs_parents(graph: Graph, root: bytes) -> dict[bytes, bytes | None]:
    """Parent of each peer reachable from ``root`` in the deterministic BFS tree."""
    parents: dict[bytes, bytes | None] = {root: None}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    return parents


def unicast_next_hops(graph: Graph, me: bytes) -> dict[bytes, bytes]:
    """For each reachable destination, the neighbour of ``me`` to send through."""
    parents = bfs_parents(graph, me)
    hops: dict[bytes, bytes] = {}
    for dst in parents:
        if dst == me:
            continue
        node = dst
        while (p := parents[node]) != me:
            assert p is not None
            node = p
        hops[dst] = node
    return hops


def broadcast_children(graph: Graph, origin: bytes, me: bytes) -> list[bytes]:
    """The peers ``me`` forwards a broadcast from ``origin`` to (its children in origin's tree)."""
    parents = bfs_parents(graph, origin)
    if me not in parents:
        return []
    return sorted(n for n, p in parents.items() if p == me)


def symmetric_graph(edges: Mapping[bytes, Set[bytes]]) -> dict[bytes, set[bytes]]:
    """Keep only the edges both ends report."""
    out: dict[bytes, set[bytes]] = {n: set() for n in edges}
    for a, peers in edges.items():
        for b in peers:
            if a != b and a in edges.get(b, ()):
                out[a].add(b)
    return out


@dataclass
class Routes:
    next_hop: dict[bytes, bytes] = field(default_factory=dict)
    graph: dict[bytes, set[bytes]] = field(default_factory=dict)
    _children: dict[bytes, list[bytes]] = field(default_factory=dict)
    me: bytes = b""

    def children(self, origin: bytes) -> list[bytes]:
        """Where to forward a broadcast from ``origin`` (cached per origin)."""
        kids = self._children.get(origin)
        if kids is None:
            kids = self._children[origin] = broadcast_children(self.graph, origin, self.me)
        return kids
