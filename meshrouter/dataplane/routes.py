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
* relay roles (``--relay``): a peer that never relays is a leaf of every
  tree but its own (reached, never passed through); of the peers at one
  distance, preferred relays take their children first.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

Graph = Mapping[bytes, Set[bytes]]


NONE: frozenset[bytes] = frozenset()


def bfs_parents(
    graph: Graph, root: bytes, leaves: Set[bytes] = NONE, preferred: Set[bytes] = NONE
) -> dict[bytes, bytes | None]:
    """Parent of each peer reachable from ``root`` in the deterministic BFS
    tree, in which ``leaves`` (other than the root) have no children and, of
    the peers at one distance, ``preferred`` ones take theirs first."""
    parents: dict[bytes, bytes | None] = {root: None}
    level = [root]
    while level:
        below: list[bytes] = []
        for node in level:
            if node in leaves and node != root:
                continue
            for nxt in sorted(graph.get(node, ())):
                if nxt not in parents:
                    parents[nxt] = node
                    below.append(nxt)
        if preferred:  # stable: otherwise in the order found
            below.sort(key=lambda n: n not in preferred)
        level = below
    return parents


def unicast_next_hops(
    graph: Graph, me: bytes, leaves: Set[bytes] = NONE, preferred: Set[bytes] = NONE
) -> dict[bytes, bytes]:
    """For each destination a route may reach, the neighbour of ``me`` to send through."""
    parents = bfs_parents(graph, me, leaves, preferred)
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


def broadcast_children(
    graph: Graph, origin: bytes, me: bytes, leaves: Set[bytes] = NONE, preferred: Set[bytes] = NONE
) -> list[bytes]:
    """The peers ``me`` forwards a broadcast from ``origin`` to (its children in origin's tree)."""
    parents = bfs_parents(graph, origin, leaves, preferred)
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
    leaves: frozenset[bytes] = NONE  # peers that never relay
    preferred: frozenset[bytes] = NONE  # preferred relays
    _connected: set[bytes] | None = None

    def children(self, origin: bytes) -> list[bytes]:
        """Where to forward a broadcast from ``origin`` (cached per origin)."""
        kids = self._children.get(origin)
        if kids is None:
            kids = broadcast_children(self.graph, origin, self.me, self.leaves, self.preferred)
            self._children[origin] = kids
        return kids

    def connected(self) -> set[bytes]:
        """Every peer connected to ``me`` by the graph, through anyone (routes
        or not; made once)."""
        if self._connected is None:
            self._connected = set(bfs_parents(self.graph, self.me)) - {self.me}
        return self._connected
