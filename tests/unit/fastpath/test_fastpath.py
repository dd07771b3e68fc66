"""The kernel fast path's decisions (``meshrouter.fastpath.core``) and its netlink
messages (``meshrouter.fastpath.fdb``): no root, no network, no clock."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.contract.config import parse_subnets
from meshrouter.fastpath.core import (
    HEARS,
    PROBE_TIMEOUT,
    TRUSTS,
    FastPath,
    PathChange,
    decode_message_untrusted,
    decode_probe_untrusted,
    encode_message,
    encode_probe,
)
from meshrouter.fastpath.fdb import NTF_MASTER, NTF_SELF, NTF_STICKY, RTM_NEWNEIGH, neigh_message
from meshrouter.testing.fakes import MeshNet, name

A, B, C = (bytes([2, 0, 0, 0, 0, i]) for i in (1, 2, 3))
MAC_A, MAC_B = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")
NETS = parse_subnets("198.18.0.0/24, 10.1.0.0/16")


def pair() -> tuple[FastPath, FastPath]:
    """Two peers that trust each other's address, connected, hellos exchanged."""
    a, b = FastPath(A, MAC_A, NETS, 1390), FastPath(B, MAC_B, NETS, 1390)
    hello_a = a.connection_up(B, "198.18.0.2")
    hello_b = b.connection_up(A, "198.18.0.1")
    b.on_message_untrusted(A, hello_a)
    a.on_message_untrusted(B, hello_b)
    return a, b


def exchange(
    a: FastPath, b: FastPath, now: float, *, a_to_b: bool = True, b_to_a: bool = True
) -> list[PathChange]:
    """One tick on each side: probes delivered in the directions that work,
    reports delivered over the (always working) control connection."""
    changes: list[PathChange] = []
    wa, wb = a.tick(now), b.tick(now)
    for _, dgram in wa.probes:
        if a_to_b:
            b.on_probe_untrusted(dgram[8:], now)
    for _, dgram in wb.probes:
        if b_to_a:
            a.on_probe_untrusted(dgram[8:], now)
    for _, payload in wa.reports:
        b.on_message_untrusted(A, payload)
    for _, payload in wb.reports:
        a.on_message_untrusted(B, payload)
    changes += wa.changes
    return changes


def run(a: FastPath, b: FastPath, start: float, end: float, **kw: bool) -> list[PathChange]:
    changes = []
    t = start
    while t < end:
        changes += exchange(a, b, t, **kw)
        t += 0.5
    return changes


def test_subnets_parse_with_a_clear_error() -> None:
    assert parse_subnets("10.0.0.0/8,") == [ipaddress.IPv4Network("10.0.0.0/8")]
    assert parse_subnets("") == []
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8' is not a CIDR"):
        parse_subnets("10.0.0.300/8")
    assert parse_subnets("2001:db8::/64") == [ipaddress.IPv6Network("2001:db8::/64")]
    with pytest.raises(ValueError, match="subnets of one family"):
        parse_subnets("10.0.0.0/8,2001:db8::/64")


def test_ipv6_peers_are_trusted_by_ipv6_subnets_only() -> None:
    v6 = FastPath(A, MAC_A, parse_subnets("2001:db8:18::/64"), 1390)
    assert v6.family == 6
    assert v6.trusts("2001:db8:18::2")
    assert not v6.trusts("2001:db8:19::2")
    assert not v6.trusts("198.18.0.2")
    v4 = FastPath(A, MAC_A, parse_subnets("198.18.0.0/24"), 1390)
    assert v4.family == 4
    assert not v4.trusts("::ffff:198.18.0.2")  # as a dual-stack socket spells it: never given
    assert v4.trusts("198.18.0.2")


def test_an_fdb_entry_to_an_ipv6_peer_carries_its_16_bytes() -> None:
    msg = neigh_message(RTM_NEWNEIGH, 1, 7, MAC_B, dst="2001:db8:18::2", master=None)
    assert ipaddress.IPv6Address("2001:db8:18::2").packed in msg
    msg4 = neigh_message(RTM_NEWNEIGH, 1, 7, MAC_B, dst="198.18.0.2", master=None)
    assert len(msg) - len(msg4) == 12


def test_the_path_goes_up_once_probes_flow_both_ways() -> None:
    a, b = pair()
    assert a.path_of(B) == "sleeve"
    changes = run(a, b, 0.0, 3.0)
    assert a.path_of(B) == "kernel"
    assert b.path_of(A) == "kernel"
    assert changes == [PathChange(B, True)]
    assert a.path_of(C) == "sleeve"  # no such connection


def test_one_blocked_direction_keeps_or_moves_both_sides_to_the_sleeve() -> None:
    a, b = pair()
    run(a, b, 0.0, 3.0)
    changes = run(a, b, 3.0, 3.0 + PROBE_TIMEOUT + 2, b_to_a=False)
    assert changes == [PathChange(B, False)]
    assert a.path_of(B) == "fallback"
    assert b.path_of(A) == "fallback"  # told by a's report that its probes stopped arriving
    changes = run(a, b, 10.0, 13.0)
    assert changes == [PathChange(B, True)]


def test_trust_must_be_mutual_and_untrusted_peers_are_not_probed() -> None:
    a = FastPath(A, MAC_A, NETS, 1390)
    b = FastPath(B, MAC_B, parse_subnets("192.0.2.0/24"), 1390)  # does not trust a
    b.on_message_untrusted(A, a.connection_up(B, "198.18.0.2"))
    a.on_message_untrusted(B, b.connection_up(A, "198.18.0.1"))
    for t in range(10):
        wa, wb = a.tick(float(t)), b.tick(float(t))
        assert wa.probes == []
        assert wb.probes == []
    assert a.path_of(B) == "sleeve"


def test_probes_from_strangers_and_garbage_are_counted_and_refused() -> None:
    a, _b = pair()
    stranger = encode_probe(MAC_A, MAC_B, C, 1, 100)[8:]
    with pytest.raises(BadPacket):
        a.on_probe_untrusted(stranger, 0.0)
    with pytest.raises(BadPacket):
        a.on_probe_untrusted(b"\x00" * 60, 0.0)
    assert a.counters["bad_probes"] == 2


@given(st.binary(max_size=80))
def test_parsers_raise_only_bad_packet(data: bytes) -> None:
    for parse in (decode_probe_untrusted, decode_message_untrusted):
        with contextlib.suppress(BadPacket):
            parse(data)


def test_probes_are_full_size_and_round_trip() -> None:
    dgram = encode_probe(MAC_B, MAC_A, A, 7, 1390)
    assert len(dgram) == 8 + 1390  # VXLAN header + a frame of the container MTU + 14
    assert dgram[:8] == struct.pack("!II", 0x08000000, 6784 << 8)
    assert decode_probe_untrusted(dgram[8:]) == (A, 7)
    assert decode_message_untrusted(encode_message(TRUSTS | HEARS, MAC_A)) == (3, MAC_A)


def test_forwarding_entries_follow_the_path_and_stay_after_the_mac_ages_out() -> None:
    a, b = pair()
    m1, m2, m3 = (bytes([0x0E, 0, 0, 0, 0, i]) for i in (1, 2, 3))
    assert a.plan_fdb({m1: B}) == ({}, [])  # path not up yet: the sleeve
    run(a, b, 0.0, 3.0)
    assert a.plan_fdb({m1: B, m2: b"", m3: C}) == ({m1: "198.18.0.2"}, [])
    assert a.plan_fdb({}) == ({}, [])  # aged out of the router's table: kept
    assert a.plan_fdb({m1: b""}) == ({}, [m1])  # moved here: removed
    a.plan_fdb({m1: B})
    run(a, b, 3.0, 3.0 + PROBE_TIMEOUT + 2, a_to_b=False)
    assert a.plan_fdb({m1: B}) == ({}, [m1])  # path down: back to the sleeve
    assert a.connection_down(B) == []  # was already down: no change to announce


def test_netlink_requests_say_what_the_bridge_command_would() -> None:
    msg = neigh_message(RTM_NEWNEIGH, 5, 9, MAC_A, dst="198.18.0.2", master=None)
    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), RTM_NEWNEIGH, 5)
    family, _, _, ifindex, state, flags, _ = struct.unpack_from("=BBHiHBB", msg, 16)
    assert (family, ifindex, flags) == (7, 9, NTF_SELF)
    assert MAC_A in msg
    assert bytes([198, 18, 0, 2]) in msg
    msg = neigh_message(RTM_NEWNEIGH, 6, 9, MAC_A, dst=None, master=4)
    _, _, _, _, state, flags, _ = struct.unpack_from("=BBHiHBB", msg, 16)
    assert flags == NTF_MASTER | NTF_STICKY
    assert state == 0x40  # static (NUD_NOARP)


def test_two_mesh_cores_agree_on_the_kernel_path_over_their_control_connection() -> None:
    """The mesh core carries FASTPATH messages and probes work (MeshNet: real
    handshakes, in memory); a peer at an untrusted address stays on the router."""
    trusted = parse_subnets("198.18.0.1/32,198.18.0.2/32")
    net = MeshNet(
        3, fastpath=lambda i: FastPath(name(i), bytes([0x0A, 0, 0, 0, 0, i]), trusted, 1390)
    )
    net.dial(1, 2)
    net.dial(1, 3)
    host_of = {n.host: k for k, n in enumerate(net.nodes, 1)}
    for _ in range(8):
        net.tick()
        for _sender, host, dgram in net.probes:
            channel = net.nodes[host_of[host] - 1].fastpath
            assert channel is not None
            channel.core.on_probe_untrusted(dgram[8:], net.now)
        net.probes.clear()
    by_peer = {c["nickname"]: c["path"] for c in net.connections(1)}
    assert by_peer == {"host2": "kernel", "host3": "sleeve"}
    assert net.connections(2)[0]["path"] == "kernel"
    assert net.connections(3)[0]["path"] == "sleeve"
