"""What goes to whom and when (``mesh.spread``), with no network: views
joined by hand, payloads carried by the test."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.mesh.spread import Spreader
from meshrouter.mesh.topology import (
    DIGEST,
    TOPOLOGY,
    ConnInfo,
    Gossip,
    decode_records_untrusted,
)

NAMES = [bytes([2, 0, 0, 0, 0, i]) for i in range(12)]


def addr(i: int) -> str:
    return f"198.18.0.{i}:6783"


class Net:
    """``n`` views with spreaders; ``connect`` brings connections up the way
    the router does (record changed, neighbour greeted); ``run`` carries
    payloads until nothing is due, counting them."""

    def __init__(self, n: int, *, digests: bool = True) -> None:
        self.g = [Gossip(NAMES[i], 100 + i, f"h{i}") for i in range(n)]
        self.s = [Spreader(g, 0.0) for g in self.g]
        self.up: list[set[int]] = [set() for _ in range(n)]
        self.digests = digests
        self.now = 0.0
        self.sent: list[tuple[int, int, bytes]] = []

    def connect(self, *pairs: tuple[int, int]) -> None:
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                self.up[x].add(y)
                self.own_changed(x)
                self.s[x].neighbour_up(NAMES[y], digests=self.digests)

    def own_changed(self, i: int, extra: tuple[ConnInfo, ...] = ()) -> None:
        conns = [ConnInfo(NAMES[k], addr(k), True, i < k) for k in self.up[i]]
        if self.g[i].set_connections([*conns, *extra]) is not None:
            self.s[i].own_changed()

    def step(self, dt: float = 0.0) -> int:
        self.now += dt
        moved = 0
        for i, s in enumerate(self.s):
            for to, payload in s.due(self.now):
                j = NAMES.index(to)
                self.sent.append((i, j, payload))
                self.s[j].receive_untrusted(NAMES[i], payload)
                moved += 1
        return moved

    def run(self, seconds: float = 5.0) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(0.1)

    def converged(self) -> bool:
        ref = self.g[0].records
        return len(ref) == len(self.g) and all(g.records == ref for g in self.g[1:])

    def records_sent(self, kind: int = TOPOLOGY) -> list[tuple[int, int, bytes]]:
        return [(i, j, p) for i, j, p in self.sent if p[0] == kind]

    def change_when_settled(self, i: int, address: str) -> list[tuple[int, int]]:
        """Once converged, ``i`` gains an address: who sent its record to whom
        until every view has it again."""
        self.run()
        assert self.converged()
        self.sent.clear()
        self.own_changed(i, (ConnInfo(NAMES[i], address, False, False),))
        self.run()
        assert self.converged()
        return [(a, b) for a, b, _ in self.records_sent()]


def test_in_a_full_mesh_a_change_is_one_message_to_each_peer_and_none_relayed() -> None:
    net = Net(5)
    net.connect(*[(a, b) for a in range(5) for b in range(a + 1, 5)])
    sent = net.change_when_settled(0, "[2001:db8::]:6783")
    assert sorted(sent) == [(0, 1), (0, 2), (0, 3), (0, 4)]


def test_in_a_line_a_change_is_passed_on_hop_by_hop_but_never_back() -> None:
    net = Net(4)
    net.connect((0, 1), (1, 2), (2, 3))
    assert net.change_when_settled(3, "[2001:db8::3]:6783") == [(3, 2), (2, 1), (1, 0)]


def test_a_storm_of_changes_costs_a_neighbour_two_messages_a_second() -> None:
    net = Net(2)
    net.connect((0, 1))
    net.run()
    net.sent.clear()
    for k in range(50):  # 50 changes in one second
        net.own_changed(0, (ConnInfo(NAMES[0], f"198.51.100.{k}:6783", False, False),))
        net.step(0.02)
    net.run(1.0)
    topo = net.records_sent()
    assert 2 <= len(topo) <= 4
    assert net.converged()  # and the last carried the latest version
    last = decode_records_untrusted(topo[-1][2])
    assert last[0].version == net.g[0].own.version


def test_digests_mend_what_was_lost_and_cost_little_when_nothing_is() -> None:
    net = Net(3)
    net.connect((0, 1), (1, 2))
    net.run()
    assert net.converged()
    # 2's view loses a record (as if a message had been lost): the next round mends it.
    del net.g[2].records[NAMES[0]]
    net.sent.clear()
    net.run(31.0)
    assert net.converged()
    digests = net.records_sent(DIGEST)
    assert {(i, j) for i, j, _ in digests} == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert all(len(p) == 3 + (2 if i == 2 else 3) * 22 for i, _, p in digests)  # 22 B a record
    assert [(i, j) for i, j, _ in net.records_sent()] == [(1, 2)]


def test_a_restarted_peer_sees_its_earlier_life_in_a_digest_and_jumps_above_it() -> None:
    net = Net(2)
    net.connect((0, 1))
    for k in range(5):
        net.own_changed(0, (ConnInfo(NAMES[0], f"198.51.100.{k}:6783", False, False),))
        net.run(1.0)
    old = net.g[0].own.version
    assert net.g[1].records[NAMES[0]].version == old
    # 0 restarts: a new uid, version 1, and meets 1 again.
    net.g[0] = Gossip(NAMES[0], 999, "h0")
    net.s[0] = Spreader(net.g[0], net.now)
    net.up = [set(), set()]
    net.connect((0, 1))
    net.run()
    assert net.g[0].own.version > old
    assert net.g[1].records[NAMES[0]].uid == 999
    assert net.converged()


def test_a_v1_neighbour_gets_whole_views_and_no_digest() -> None:
    net = Net(3, digests=False)
    net.connect((0, 1), (1, 2))
    net.run(31.0)
    assert net.converged()
    assert net.records_sent(DIGEST) == []
    fulls = [p for i, _, p in net.records_sent() if len(decode_records_untrusted(p)) == 3]
    assert len(fulls) >= 4  # each end of each connection, again at the round


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 10), st.integers(0, 2**32), st.integers(0, 15))
def test_any_connected_graph_converges_by_updates_alone(n: int, seed: int, extra: int) -> None:
    rng = random.Random(seed)
    net = Net(n)
    order = list(range(n))
    rng.shuffle(order)
    edges = {tuple(sorted((order[k], order[rng.randrange(k)]))) for k in range(1, n)}
    for _ in range(extra):
        a, b = rng.sample(range(n), 2)
        edges.add(tuple(sorted((a, b))))
    for a, b in sorted(edges, key=lambda _: rng.random()):
        net.connect((a, b))
        net.step(rng.choice([0.0, 0.05, 0.3]))
    net.run(5.0)  # well within one anti-entropy round: no digest needed
    assert net.converged()


@given(st.binary(max_size=200))
def test_a_digest_parser_fed_garbage_raises_only_bad_packet(data: bytes) -> None:
    g = Gossip(NAMES[0], 1, "h0")
    with contextlib.suppress(BadPacket):
        g.receive_digest_untrusted(bytes([DIGEST]) + data)
    s = Spreader(g, 0.0)
    s.neighbour_up(NAMES[1], digests=True)
    with contextlib.suppress(BadPacket):
        s.receive_untrusted(NAMES[1], data)


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 9)), max_size=12))
def test_a_digest_lists_what_the_other_lacks_or_holds_older(
    theirs: list[tuple[bytes, int]],
) -> None:
    a, b = Gossip(NAMES[0], 1, "h0"), Gossip(NAMES[1], 2, "h1")
    for name, version in theirs:
        if name not in (NAMES[0], NAMES[1]):
            b.records[name] = b.records[NAMES[1]].__class__(name, 7, version, "x")
    a.receive_untrusted(b.full())
    lacking, jumped = b.receive_digest_untrusted(a.digest())
    assert not jumped
    assert lacking == set()  # a has all b has
    lacking, _ = a.receive_digest_untrusted(b.digest())
    assert lacking == {NAMES[0]}  # b lacks only a's own record
