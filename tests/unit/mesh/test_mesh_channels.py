"""The mesh core with the real IPAM and DNS channels beside it, in memory
(``MeshNet``): three routers make one ring, split, hand out addresses and
names on both sides, and heal to one ring and one set of names.  No root, no
sockets, no clock but the test's."""

from __future__ import annotations

import itertools

from meshrouter.ipam.peer import IpamPeer
from meshrouter.mesh.core import Mesh
from meshrouter.proto.control import MessageType
from meshrouter.testing.fakes import MeshNet, name

WEB = "web.mesh.local."
DB = "db.mesh.local."


def alive(net: MeshNet, pairs: list[tuple[int, int]], seconds: float) -> None:
    """Time passes; the routers of each pair keep hearing each other's UDP."""
    for _ in range(int(seconds / 0.5)):
        for a, b in pairs:
            net.exchange_heartbeats(a, b)
        net.tick()


def cut(net: MeshNet, i: int) -> None:
    """Every connection of router ``i`` ends (its cable is pulled)."""
    net.mesh(i).close_all("cable pulled", net.now)
    net.pump()


def ring(peer: IpamPeer) -> tuple[tuple[int, bytes], ...]:
    return tuple(sorted((s, t.owner) for s, t in peer.core.tokens.items()))


def held(net: MeshNet) -> list[int]:
    return sorted(a for i in (1, 2, 3) for a in net.ipam(i).core.allocs)


def test_a_partition_heals_to_one_ring_and_one_set_of_names() -> None:
    net = MeshNet(3)
    full = [(1, 2), (1, 3), (2, 3)]
    for a, b in full:
        net.dial(a, b)
    alive(net, full, 5)
    assert all(net.ipam(i).core.ready for i in (1, 2, 3))
    assert len({ring(net.ipam(i)) for i in (1, 2, 3)}) == 1
    assert {net.ipam(1).core.owner_of(t) for t in net.ipam(1).core.tokens} == {
        name(1),
        name(2),
        name(3),
    }
    web1 = net.ipam(1).requests.allocate("r1/web", None, "")
    net.dns(1).add("r1/web", [WEB], [web1], net.now)
    alive(net, full, 2)

    cut(net, 3)  # {1, 2} | {3}
    assert name(3) not in net.mesh(1).peers
    db2 = net.ipam(2).requests.allocate("r2/db", None, "")
    net.dns(2).add("r2/db", [DB], [db2], net.now)
    web3 = net.ipam(3).requests.allocate("r3/web", None, "")  # in its own share: no one to ask
    net.dns(3).add("r3/web", [WEB], [web3], net.now)
    net.ipam(1).requests.release("r1/web")  # detached: a release and a tombstone 3 misses
    net.dns(1).remove("r1/web", net.now)
    alive(net, [(1, 2)], 10)
    assert sorted(e.addr for e in net.dns(3).records.lookup(WEB)) == sorted([web1, web3])

    net.dial(1, 3)  # healed
    net.dial(2, 3)
    alive(net, full, 5)
    assert len({ring(net.ipam(i)) for i in (1, 2, 3)}) == 1, "the rings did not converge"
    entries = [net.dns(i).records.entries for i in (1, 2, 3)]
    assert entries[0] == entries[1] == entries[2], "the names did not converge"
    for i in (1, 2, 3):
        assert sorted(e.addr for e in net.dns(i).records.lookup(WEB)) == [web3]
        assert [e.addr for e in net.dns(i).records.lookup(DB)] == [db2]
    assert held(net) == sorted([db2, web3]), f"lost or held twice: {held(net)}"
    # Each address is held by the owner of its range, and nobody else.
    for i in (1, 2, 3):
        core = net.ipam(i).core
        assert all(core.owner_of(a) == name(i) for a in core.allocs)


def test_a_channel_message_of_a_dropped_channel_is_unknown() -> None:
    """A subsystem that could not start is taken off the table whole: its
    messages are then counted as unknown ones, not handed to it."""
    net = MeshNet(2)
    net.dial(1, 2)
    mesh: Mesh = net.mesh(2)
    mesh.drop_channel(net.dns(2))
    net.mesh(1).peers[name(2)].control.send_message(MessageType.DNS, b"\x01\x00\x00")
    net.pump()
    assert mesh.counters["control_messages_unknown"] == 1
    assert name(1) in mesh.peers


def test_every_message_type_has_one_handler() -> None:
    """The dispatch table: the core's own types and each channel's, no two alike."""
    net = MeshNet(1)
    mesh = net.mesh(1)
    types = [
        MessageType.GOSSIP,
        MessageType.CLOCK,
        MessageType.ROTATE,
        MessageType.OBSERVED,
        MessageType.REVOKE,
        MessageType.AUTH,
        MessageType.RETIRE_PASSWORD,
        MessageType.TUNNEL,
        *itertools.chain.from_iterable(
            [c.mtype] + ([c.relayed] if c.relayed is not None else []) for c in mesh.channels
        ),
    ]
    assert len(types) == len(set(types))
    assert set(mesh._handlers) == set(types)
