from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.crypto import Suite
from meshrouter.dataplane import (
    HEADER,
    DataSession,
    FramePacker,
    PacketType,
    iter_frames_untrusted,
    parse_header_untrusted,
)
from meshrouter.errors import BadPacket
from meshrouter.mactable import LOCAL, MacTable, is_multicast


def pair() -> tuple[DataSession, DataSession]:
    k1, k2 = b"1" * 32, b"2" * 32
    a = DataSession(suite=Suite.AEGIS128L, send_key=k1, recv_key=k2, local_index=5, peer_index=9)
    b = DataSession(suite=Suite.AEGIS128L, send_key=k2, recv_key=k1, local_index=9, peer_index=5)
    return a, b


def deliver(dst: DataSession, pkt: bytes, now: float) -> tuple[int, bytes]:
    ptype, index, counter = parse_header_untrusted(pkt)
    assert index == dst.local_index
    return ptype, dst.open_untrusted(pkt, counter, now)


def test_data_roundtrip_and_replay_dropped() -> None:
    a, b = pair()
    packer = FramePacker(1400)
    packer.add(b"\xff" * 60)
    packer.add(b"\x01" * 100)
    pkt = a.seal(PacketType.DATA, packer.take())
    ptype, plain = deliver(b, pkt, 1.0)
    assert ptype == PacketType.DATA
    assert [bytes(f) for f in iter_frames_untrusted(plain)] == [b"\xff" * 60, b"\x01" * 100]
    with pytest.raises(BadPacket, match="replayed"):
        deliver(b, pkt, 1.0)


def test_forged_packet_dropped() -> None:
    a, b = pair()
    pkt = bytearray(a.seal(PacketType.DATA, b"\x00\x05hello"))
    pkt[HEADER.size + 2] ^= 0x40
    with pytest.raises(BadPacket, match="authentication"):
        deliver(b, bytes(pkt), 1.0)
    # A forged packet does not advance the replay window.
    good = a.seal(PacketType.DATA, b"\x00\x05hello")
    assert deliver(b, good, 1.0)[0] == PacketType.DATA


def test_established_needs_udp_both_ways() -> None:
    a, b = pair()
    assert not a.established(0.0)
    deliver(b, a.heartbeat(0.0), 0.0)  # b hears a; a's flag said "not heard you"
    assert b.hears_peer(0.0)
    assert not b.established(0.0)
    ptype, plain = deliver(a, b.heartbeat(0.1), 0.1)  # b says "heard you"
    assert ptype == PacketType.HEARTBEAT
    a.on_heartbeat(plain, 0.1)
    assert a.established(0.1)
    _ptype, plain = deliver(b, a.heartbeat(0.2), 0.2)
    b.on_heartbeat(plain, 0.2)
    assert b.established(0.2)
    assert not a.established(10.0)  # silence: no longer established


def test_packer_keeps_route_prefix() -> None:
    p = FramePacker(100, prefix=b"RRRR")
    p.add(b"abc")
    assert len(p) == 5
    assert p.take() == b"RRRR\x00\x03abc"
    assert len(p) == 0
    p.add(b"z")
    assert p.take() == b"RRRR\x00\x01z"


def test_route_header_and_frames_from_offset() -> None:
    from meshrouter.dataplane import ROUTE, parse_route_untrusted

    plain = ROUTE.pack(b"A" * 6, b"B" * 6, 7) + b"\x00\x02hi"
    assert parse_route_untrusted(plain) == (b"A" * 6, b"B" * 6, 7)
    assert [bytes(f) for f in iter_frames_untrusted(plain, ROUTE.size)] == [b"hi"]
    with pytest.raises(BadPacket):
        parse_route_untrusted(b"short")


def test_packer_limit() -> None:
    p = FramePacker(100)
    assert p.fits(98)
    assert not p.fits(99)
    p.add(b"x" * 50)
    assert not p.fits(50)
    assert p.frames == 1
    assert len(p.take()) == 52
    assert len(p) == 0


@given(st.binary(max_size=64))
def test_header_parser_raises_only_bad_packet(data: bytes) -> None:
    with contextlib.suppress(BadPacket):
        parse_header_untrusted(data)


@given(st.binary(max_size=300))
def test_frame_iterator_raises_only_bad_packet(data: bytes) -> None:
    try:
        for f in iter_frames_untrusted(data):
            assert len(f) > 0
    except BadPacket:
        pass


@given(st.binary(min_size=13, max_size=200))
def test_open_garbage_raises_only_bad_packet(data: bytes) -> None:
    _, b = pair()
    try:
        _, _, counter = parse_header_untrusted(data)
        b.open_untrusted(data, counter, 0.0)
    except BadPacket:
        pass


def test_mac_table_learn_lookup_expire() -> None:
    t = MacTable(max_age=10)
    m1, m2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    assert t.learn(m1, LOCAL, 0.0)
    assert not t.learn(m1, LOCAL, 1.0)
    assert t.learn(m2, b"peerB", 1.0)
    assert t.lookup(m1, 5.0) == LOCAL
    assert t.lookup(m2, 5.0) == b"peerB"
    assert t.learn(m2, LOCAL, 6.0)  # moved
    assert t.lookup(m2, 6.0) == LOCAL
    assert t.lookup(m1, 20.0) is None
    t.learn(m1, b"peerC", 20.0)
    assert t.forget_owner(b"peerC") == 1
    assert t.lookup(b"\x02" * 6, 0.0) is None
    t.learn(m1, b"x", 0.0)
    assert t.expire(100.0) == 2
    assert len(t) == 0
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(b"\x01\x00\x5e\x00\x00\x01")
    assert not is_multicast(m1)
