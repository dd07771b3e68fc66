"""Hole punching (``mesh.tunnel``): two routers behind two NATs dial each
other through a peer both reach, then punch a direct UDP path."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.contract.status import ConnState
from meshrouter.mesh.tunnel import (
    HOLD_SEALED,
    PUNCH_TIMEOUT,
    decode_tunnel_untrusted,
    encode_tunnel,
)
from meshrouter.proto.control import MessageType
from meshrouter.testing.fakes import MeshNet, name

from .test_mesh import establish


@given(st.binary(max_size=80))
def test_the_tunnel_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_tunnel_untrusted(data)


def test_a_tunnel_message_round_trips() -> None:
    raw = encode_tunnel(name(2), name(1), 1, 77, b"stream")
    assert decode_tunnel_untrusted(raw) == (name(2), name(1), 1, 77, b"stream")


def behind_nats(net: MeshNet, *hosts: int) -> None:
    """Hosts 2.. advertise a private address, and host 1 sees each at a
    public one (as OBSERVED would say): behind one NAT each."""
    for i in hosts:
        net.mesh(i).advertise([f"10.0.{i}.2:6783"])
        net.mesh(i).peers[name(1)].seen_as = ("", f"203.0.113.{i}:6783")


def tick(net: MeshNet, times: int, *udp: tuple[int, int]) -> None:
    """``times`` ticks of half a second, UDP flowing between the ``udp`` pairs."""
    for _ in range(times):
        for pair in udp:
            net.exchange_heartbeats(*pair)
        net.tick()


def test_two_hosts_behind_two_nats_dial_through_a_relay_and_punch() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    behind_nats(net, 2, 3)
    for _ in range(8):
        net.tick()
    low, high = sorted((2, 3), key=name)
    at_low = net.mesh(low).peers[name(high)]
    at_high = net.mesh(high).peers[name(low)]
    assert at_low.via == at_high.via == name(1)
    assert at_low.initiator
    assert not at_high.initiator
    # Each sends its first datagrams to the other's public address at once.
    assert at_low.link is not None
    assert at_high.link is not None
    assert at_low.link.udp_addr == (f"203.0.113.{high}", 6783)
    assert at_high.link.udp_addr == (f"203.0.113.{low}", 6783)
    assert at_low.state is ConnState.PENDING
    assert net.mesh(1).counters["tunnel_bytes_relayed"] > 0
    # The relay's record of the pair carries no address anyone could dial.
    rec = net.mesh(1).gossip.records[name(low)]
    assert all(c.address == "" for c in rec.connections if c.peer == name(high))
    # Nobody dials a candidate: it is no listening address.
    assert "203.0.113.2:6783" not in net.mesh(3).gossip.addresses_of(name(2))
    net.exchange_heartbeats(low, high)
    net.tick()
    assert at_low.state is ConnState.ESTABLISHED
    assert net.mesh(low).links.routes.next_hop.get(name(high)) == name(high)  # direct
    for _ in range(int(PUNCH_TIMEOUT / 0.5) + 4):  # established: kept
        for pair in ((low, high), (1, 2), (1, 3)):
            net.exchange_heartbeats(*pair)
        net.tick()
    assert net.mesh(low).peers[name(high)] is at_low


def test_no_udp_through_the_nats_keeps_the_tunnel_and_punches_to_a_new_mapping() -> None:
    """No datagram crosses: the tunnel stays (its keys seal the relayed data
    end to end) and its heartbeats keep going; when the peer's NAT maps it
    to another port, that is where they go next."""
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    behind_nats(net, 2, 3)
    low, high = sorted((2, 3), key=name)
    for _ in range(8):
        net.tick()
    tunnel = net.mesh(low).peers[name(high)]
    tick(net, int(PUNCH_TIMEOUT / 0.5) + 4, (1, 2), (1, 3))  # none crosses between them
    assert net.mesh(low).peers[name(high)] is tunnel
    assert name(low) in net.mesh(high).peers
    assert tunnel.punch_failed
    assert net.mesh(low).counters["punches_failed"] == 1
    assert tunnel.link is not None
    assert tunnel.link.e2e
    assert net.mesh(low).links.by_name[name(high)] is tunnel.link  # the keys, published
    assert net.mesh(low).links.routes.next_hop[name(high)] == name(1)  # data relayed
    nick = net.mesh(high).nickname_of(name(high))
    assert "sealed end to end" in net.mesh(low).tunnels.states(net.now)[nick]
    # high's NAT reboots and maps it to another port, which h1 tells it; low
    # still says the old one (it punched there), which does not count.
    net.mesh(high).peers[name(1)].seen_as = ("", f"203.0.113.{high}:40000")
    net.mesh(high).peers[name(low)].seen_as = ("", f"203.0.113.{high}:6783")
    assert net.mesh(high).reflection.candidate() == f"203.0.113.{high}:40000"
    assert not net.mesh(high).reflection.symmetric()
    tried = net.mesh(low).counters["punches_tried"]
    tick(net, 6, (1, 2), (1, 3))
    assert tunnel.punch_to == (f"203.0.113.{high}", 40000)
    assert tunnel.link.punch_to == tunnel.punch_to  # the forwarder sends there
    assert net.mesh(low).counters["punches_tried"] == tried + 1
    assert not tunnel.punch_failed


def test_behind_a_nat_that_maps_per_destination_a_tunnel_is_opened_for_its_keys() -> None:
    """h3's NAT shows h1 and h4 two ports: no candidate to punch to.  h2,
    behind a NAT of its own, still gets a tunnel with h3 through h1 (after
    ``HOLD_SEALED``), that punches nothing and holds their own keys."""
    net = MeshNet(4, ipam="fake")
    establish(net, (1, 2), (1, 3), (1, 4), (3, 4))
    behind_nats(net, 2, 3)
    net.mesh(3).peers[name(4)].seen_as = ("", "203.0.113.3:2000")  # per destination
    for _ in range(4):
        net.tick()
    assert net.mesh(3).reflection.candidate() == ""
    assert net.mesh(3).reflection.behind_nat()
    rec3 = net.mesh(2).gossip.records[name(3)]
    assert rec3.behind_nat()  # the flag on its entry to itself: no candidate
    assert not net.mesh(2).gossip.records[name(1)].behind_nat()
    tick(net, int(HOLD_SEALED / 0.5) + 4, (1, 2), (1, 3), (1, 4), (3, 4))
    tunnel = net.mesh(2).peers[name(3)]
    assert tunnel.via == name(1)
    assert tunnel.link is not None
    assert tunnel.link.e2e
    assert net.mesh(3).peers[name(2)].link is not None
    assert net.mesh(2).counters["tunnels_opened"] == 1
    assert net.mesh(2).counters["punches_tried"] == 0
    assert tunnel.link.udp_addr is None  # nowhere to send UDP to: nothing sent
    assert name(4) not in {c.tunnel_to for c in net.mesh(2).tunnels.conns()}  # h4: dialable
    assert net.mesh(2).links.routes.next_hop[name(3)] == name(1)
    tick(net, int(PUNCH_TIMEOUT / 0.5) + 4, (1, 2), (1, 3), (1, 4), (3, 4))
    assert net.mesh(2).peers[name(3)] is tunnel  # kept
    assert net.mesh(2).counters["punches_failed"] == 0


def test_a_connection_of_their_own_replaces_a_tunnel() -> None:
    """A tunnel, then the pair connect directly (a port forward opened):
    both ends keep the direct one, whichever dialled."""
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    behind_nats(net, 2, 3)
    low, high = sorted((2, 3), key=name)
    for _ in range(8):
        net.tick()
    assert net.mesh(low).peers[name(high)].via == name(1)
    establish(net, (high, low))
    for _ in range(2):
        net.tick()
    assert net.mesh(low).peers[name(high)].via is None
    assert net.mesh(high).peers[name(low)].via is None
    assert not net.mesh(low).tunnels.conns()
    assert not net.mesh(high).tunnels.conns()


def test_hosts_behind_one_nat_or_not_behind_any_are_not_tunnelled() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    for i in (2, 3):
        net.mesh(i).advertise([f"10.0.0.{i}:6783"])
        net.mesh(i).peers[name(1)].seen_as = ("", "203.0.113.9:6783")  # one NAT
    for _ in range(8):
        net.tick()
    assert all(n.mesh.counters["punches_tried"] == 0 for n in net.nodes)


def test_a_tunnel_message_for_another_is_passed_on_only_from_its_origin() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    forged = encode_tunnel(name(3), name(9), 1, 5, b"x")  # origin is not the sender
    net.mesh(2).send_message(net.mesh(2).peers[name(1)], MessageType.TUNNEL, forged)
    net.pump()
    assert net.mesh(1).counters["tunnel_relay_dropped"] == 1
    assert net.mesh(3).counters["tunnel_unknown"] == 0
    bad = b"\x00" * 5
    net.mesh(2).send_message(net.mesh(2).peers[name(1)], MessageType.TUNNEL, bad)
    net.pump()
    assert net.mesh(1).counters["control_messages_bad"] == 1
    assert name(2) in net.mesh(1).peers


def test_a_peer_opening_tunnel_after_tunnel_gets_two_at_most() -> None:
    """Each TUNNEL with a new id would be a handshake waiting for its
    timeout, taking a place under --conn-limit: two per peer at once."""
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    relay = net.mesh(2).peers[name(1)]
    for tid in range(1, 6):
        net.mesh(2).send_message(
            relay, MessageType.TUNNEL, encode_tunnel(name(3), name(2), 1, tid, b"")
        )
    net.pump()
    assert sum(1 for c in net.mesh(3).conns.values() if c.via is not None) == 2
    assert net.mesh(3).counters["tunnels_refused"] == 3
