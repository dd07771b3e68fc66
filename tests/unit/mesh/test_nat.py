"""Reflexive addresses (``mesh.nat``): each neighbour says how it sees us;
a NAT that maps per destination shows as two ports for one address."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.mesh.nat import decode_observed_untrusted, encode_observed
from meshrouter.mesh.statusview import nat_status
from meshrouter.testing.fakes import MeshNet, name

from .test_mesh import establish


def test_observed_round_trips() -> None:
    for tcp, udp in (
        ("", ""),
        ("203.0.113.2:40000", "203.0.113.2:1024"),
        ("", "[2001:db8::1]:6783"),
    ):
        assert decode_observed_untrusted(encode_observed(tcp, udp)) == (tcp, udp)


@given(st.binary(max_size=200))
def test_observed_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        decode_observed_untrusted(data)


def test_each_neighbour_learns_how_the_other_sees_it() -> None:
    net = MeshNet(2, ipam="fake")
    establish(net, (1, 2))
    net.tick()
    at_1 = net.mesh(1).peers[name(2)]
    at_2 = net.mesh(2).peers[name(1)]
    # 1 dialled 2: 2 saw the connection come from 1's source port.
    assert at_1.seen_as[0] == "198.18.0.1:40001"
    assert at_2.seen_as[0] == ""  # 1 dialled 2's listening address: nothing to tell
    assert at_1.seen_as[1] == "198.18.0.1:6783"
    assert at_2.seen_as[1] == "198.18.0.2:6783"
    assert at_2.told_seen == ("198.18.0.1:40001", "198.18.0.1:6783")  # what 2 told 1
    before = at_2.control.messages_sent
    net.tick()  # nothing changed: nothing told again (a heartbeat at most)
    assert at_2.control.messages_sent - before <= 1


def test_one_address_seen_with_two_ports_is_a_symmetric_nat() -> None:
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    net.mesh(1).advertise(["10.0.0.5:6783"])
    a, b = net.mesh(1).peers[name(2)], net.mesh(1).peers[name(3)]
    a.seen_as = ("", "203.0.113.9:1024")
    b.seen_as = ("", "203.0.113.9:1024")
    nat = nat_status(net.mesh(1))
    assert nat["behind_nat"]
    assert not nat["symmetric"]
    assert nat["seen_udp"] == {"203.0.113.9:1024": ["host2", "host3"]}
    b.seen_as = ("", "203.0.113.9:2999")
    assert nat_status(net.mesh(1))["symmetric"]
    a.seen_as = b.seen_as = ("", "10.0.0.5:6783")
    assert not nat_status(net.mesh(1))["behind_nat"]


def test_the_dialled_side_sends_no_datagram_before_the_dialler_does() -> None:
    """The side that was dialled learns the peer's UDP address from its first
    datagram; sent first to the connection's source (perhaps a NAT), it would
    take the mapping the peer's own datagrams need."""
    net = MeshNet(2, ipam="fake")
    net.dial(1, 2)
    assert net.mesh(1).links.by_name[name(2)].udp_addr == ("198.18.0.2", 6783)
    assert net.mesh(2).links.by_name[name(1)].udp_addr is None
    net.exchange_heartbeats(1, 2)
    assert net.mesh(2).links.by_name[name(1)].udp_addr == ("198.18.0.1", 6783)


def test_a_public_address_is_dialled_by_peers_and_offers_nothing_to_punch_to() -> None:
    """``--nat-public``: host 1 behind a NAT that forwards its port says where,
    as an address of its own (peers dial it as they dial a host with no NAT)
    and, being dialled there, offers no candidate to punch to."""
    net = MeshNet(3, ipam="fake")
    establish(net, (1, 2), (1, 3))
    m1 = net.mesh(1)
    m1.advertise(["10.0.0.5:6783"])
    for conn in m1.peers.values():
        conn.seen_as = ("", "203.0.113.9:6783")
    m1.announce.own_record_changed()
    assert nat_status(m1)["candidate"] == "203.0.113.9:6783"  # punched to, without
    m1.public = ("203.0.113.9:6783",)
    m1.announce.own_record_changed()
    net.tick()
    nat = nat_status(m1)
    assert nat["candidate"] == ""
    assert nat["public"] == ["203.0.113.9:6783"]
    assert nat["behind_nat"]
    gossip2 = net.mesh(2).gossip
    assert "203.0.113.9:6783" in gossip2.addresses_of(name(1))
    assert gossip2.candidates_of(name(1)) == set()
