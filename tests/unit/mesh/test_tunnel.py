"""Hole punching (``mesh.tunnel``): two routers behind two NATs dial each
other through a peer both reach, then punch a direct UDP path."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.contract.status import ConnState
from meshrouter.mesh.tunnel import (
    BACKOFF_FIRST,
    NO_PATH,
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


def test_no_udp_through_the_nats_closes_the_tunnel_and_tries_again_later() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    behind_nats(net, 2, 3)
    low, high = sorted((2, 3), key=name)
    for _ in range(8):
        net.tick()
    assert name(high) in net.mesh(low).peers
    for _ in range(int(PUNCH_TIMEOUT / 0.5) + 2):  # no datagram ever crosses
        net.tick()
        if name(high) in net.mesh(low).peers:
            closing = net.mesh(low).peers[name(high)]
    assert name(high) not in net.mesh(low).peers
    assert closing.control.close_reason == NO_PATH
    assert net.mesh(low).counters["punches_failed"] == 1
    assert name(low) not in net.mesh(high).peers  # told by the CLOSE, through the relay
    tried = net.mesh(low).counters["punches_tried"]
    for _ in range(int(BACKOFF_FIRST * 0.8 / 0.5) - 2):
        net.tick()
    assert net.mesh(low).counters["punches_tried"] == tried  # backing off
    for _ in range(int(BACKOFF_FIRST * 0.5 / 0.5) + 2):
        net.tick()
    assert net.mesh(low).counters["punches_tried"] == tried + 1


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
