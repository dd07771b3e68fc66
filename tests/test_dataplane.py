from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.crypto import Suite
from meshrouter.dataplane import (
    HEADER,
    PROBE_SIZES,
    SAFE_DATAGRAM,
    DataSession,
    FramePacker,
    PacketType,
    SendBuffer,
    compact_untrusted,
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


def deliver(dst: DataSession, pkts: list[bytes], now: float) -> list[tuple[int, bytes]]:
    """Feed datagrams one by one; return the whole messages that came out."""
    out = []
    for pkt in pkts:
        ptype, index, counter, seg, nseg = parse_header_untrusted(pkt)
        assert index == dst.local_index
        plain = dst.receive_untrusted(pkt, counter, seg, nseg, now)
        if plain is not None:
            if ptype == PacketType.HEARTBEAT:
                dst.on_heartbeat(plain, len(pkt), now)
            out.append((ptype, bytes(plain)))  # the view is only valid until the next message
    return out


def test_data_roundtrip_and_replay_dropped() -> None:
    a, b = pair()
    packer = FramePacker(1400)
    packer.add(b"\xff" * 60)
    packer.add(b"\x01" * 100)
    pkts = a.seal(PacketType.DATA, packer.take())
    assert len(pkts) == 1
    ((ptype, plain),) = deliver(b, pkts, 1.0)
    assert ptype == PacketType.DATA
    assert [bytes(f) for f in iter_frames_untrusted(plain)] == [b"\xff" * 60, b"\x01" * 100]
    with pytest.raises(BadPacket, match="replayed"):
        deliver(b, pkts, 1.0)


def test_forged_packet_dropped() -> None:
    a, b = pair()
    (pkt,) = a.seal(PacketType.DATA, b"\x00\x00\x00\x05hello")
    bad = bytearray(pkt)
    bad[HEADER.size + 2] ^= 0x40
    with pytest.raises(BadPacket, match="authentication"):
        deliver(b, [bytes(bad)], 1.0)
    # A forged packet does not advance the replay window: the real one still passes.
    assert deliver(b, [pkt], 1.0)[0][0] == PacketType.DATA


@pytest.mark.parametrize("size", [SAFE_DATAGRAM, 1472])
def test_large_message_is_segmented_and_reassembled_in_any_order(size: int) -> None:
    a, b = pair()
    a.datagram_size = size
    msg = bytes(range(256)) * 250  # 64000 bytes
    pkts = a.seal(PacketType.DATA, msg)
    assert len(pkts) == -(-(len(msg) + 32) // (size - HEADER.size))
    assert all(len(p) == size for p in pkts[:-1])
    assert len(pkts[-1]) <= size
    shuffled = pkts[1::2] + pkts[0::2]
    ((_, plain),) = deliver(b, shuffled, 1.0)
    assert plain == msg
    # Duplicated segments do no harm; a message missing one never comes out.
    (p0, *rest) = a.seal(PacketType.DATA, msg)
    assert deliver(b, rest + rest[:3], 2.0) == []
    assert deliver(b, [p0], 2.0)[0][1] == msg
    assert deliver(b, a.seal(PacketType.DATA, msg)[1:], 3.0) == []


def test_partial_messages_are_bounded() -> None:
    a, b = pair()
    for _ in range(20):
        deliver(b, a.seal(PacketType.DATA, bytes(5000))[1:], 1.0)
    assert b.reassembly_drops == 20 - 8
    assert len(b._partial) == 8


def test_seal_layout_and_compact_roundtrip() -> None:
    a, b = pair()
    a.datagram_size = 1472
    msg = bytes(range(256)) * 200
    out = SendBuffer()
    total, size = a.seal_into(PacketType.DATA, msg, out)
    nseg = -(-total // size)
    assert nseg == -(-(len(msg) + a.tag_bytes) // (size - HEADER.size))
    _, _, counter, _, _ = parse_header_untrusted(out.data, 0, size)
    ct = np.zeros(len(out.data), np.uint8)
    copied = compact_untrusted(out.arr, 0, total, nseg, size, 0, counter, ct)
    assert copied == len(msg) + a.tag_bytes
    whole = ct[:copied].tobytes()
    plain = b.open_untrusted(out.data[:13], counter, whole, nseg, 1.0)
    assert plain == msg
    # A run that skips a segment is refused, so the caller goes datagram by datagram.
    broken = np.frombuffer(bytes(out.data[:size]) + bytes(out.data[2 * size : total]), np.uint8)
    assert compact_untrusted(broken, 0, len(broken), nseg - 1, size, 0, counter, ct) == -1
    # So is a run whose last datagram belongs to another message.
    assert compact_untrusted(out.arr, 0, total, nseg, size, 0, counter + 1, ct) == -1
    # A run from the middle of the message: segments 3.. to the end.
    tail = compact_untrusted(out.arr, 3 * size, total, nseg - 3, size, 3, counter, ct)
    assert ct[:tail].tobytes() == whole[3 * (size - HEADER.size) :]


def test_established_needs_udp_both_ways() -> None:
    a, b = pair()
    assert not a.established(0.0)
    deliver(b, a.heartbeats(0.0, probe=False), 0.0)  # b hears a; a said "not heard you"
    assert b.hears_peer(0.0)
    assert not b.established(0.0)
    deliver(a, b.heartbeats(0.1, probe=False), 0.1)  # b says "heard you"
    assert a.established(0.1)
    deliver(b, a.heartbeats(0.2, probe=False), 0.2)
    assert b.established(0.2)
    assert not a.established(10.0)  # silence: no longer established


def test_path_mtu_probing_finds_the_largest_size_that_gets_through() -> None:
    a, b = pair()
    assert a.datagram_size == SAFE_DATAGRAM
    limit = 1400  # the path drops datagrams larger than this

    def path(pkts: list[bytes]) -> list[bytes]:
        return [p for p in pkts if len(p) <= limit]

    probes = a.heartbeats(0.0, probe=True)
    assert sorted({len(p) for p in probes} - {min(len(p) for p in probes)}) == sorted(PROBE_SIZES)
    deliver(b, path(probes), 0.0)
    deliver(a, b.heartbeats(0.5, probe=False), 0.5)
    assert a.pmtu_confirmed
    assert a.datagram_size == 1400
    # Once confirmed, only larger sizes are probed.
    assert max(len(p) for p in a.heartbeats(1.0, probe=True)) == 1472
    assert min(len(p) for p in a.heartbeats(1.0, probe=True)[1:]) > 1400
    # The kernel says the path shrank: back to the safe size until probes confirm again.
    a.path_too_small()
    assert a.datagram_size == SAFE_DATAGRAM
    assert not a.pmtu_confirmed
    # Sizes heard long ago are not reported back.
    assert b.heartbeats(100.0, probe=False)
    deliver(a, b.heartbeats(100.0, probe=False), 100.0)
    assert not a.pmtu_confirmed


def test_packer_keeps_route_prefix() -> None:
    p = FramePacker(100, prefix=b"RRRR")
    p.add(b"abc")
    assert len(p) == 7
    assert p.take() == b"RRRR\x00\x00\x00\x03abc"
    assert len(p) == 0
    p.add(b"z")
    assert p.take() == b"RRRR\x00\x00\x00\x01z"


def test_route_header_and_frames_from_offset() -> None:
    from meshrouter.dataplane import ROUTE, parse_route_header_untrusted, parse_route_untrusted

    plain = ROUTE.pack(b"A" * 6, b"B" * 6, 7) + b"\x00\x00\x00\x02hi"
    assert parse_route_untrusted(plain) == (b"A" * 6, b"B" * 6, 7, 2)
    assert [bytes(f) for f in iter_frames_untrusted(plain, ROUTE.size)] == [b"hi"]
    with pytest.raises(BadPacket):
        parse_route_untrusted(b"short")
    assert parse_route_header_untrusted(plain[:13]) == (b"A" * 6, b"B" * 6, 7)
    with pytest.raises(BadPacket):
        parse_route_header_untrusted(plain[:12])


def test_packer_limit() -> None:
    p = FramePacker(100)
    assert p.fits(96)
    assert not p.fits(97)
    p.add(b"x" * 50)
    assert not p.fits(50)
    assert p.frames == 1
    assert len(p.take()) == 54
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


@given(st.lists(st.binary(min_size=15, max_size=200), max_size=10))
def test_receive_garbage_raises_only_bad_packet(datagrams: list[bytes]) -> None:
    _, b = pair()
    for data in datagrams:
        with contextlib.suppress(BadPacket):
            _, _, counter, seg, nseg = parse_header_untrusted(data)
            b.receive_untrusted(data, counter, seg, nseg, 0.0)


@given(
    st.binary(max_size=3000),
    st.integers(1, 6),
    st.integers(16, 700),
    st.integers(0, 3000),
    st.integers(0, 70),
)
def test_compact_never_raises_or_overruns(
    data: bytes, count: int, size: int, off: int, first: int
) -> None:
    src = np.frombuffer(data, np.uint8)
    dst = np.zeros(2000, np.uint8)
    end = min(len(data), off + count * size)
    copied = compact_untrusted(src, off, end, count, size, first, 0, dst)
    assert -1 <= copied <= len(dst)


def test_mac_table_learn_lookup_expire() -> None:
    t = MacTable(max_age=10)
    m1, m2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    v = t.version
    assert t.learn(m1, LOCAL, 0.0)
    assert t.version > v  # a new MAC
    v = t.version
    assert not t.learn(m1, LOCAL, 1.0)
    assert t.version == v  # only refreshed
    assert t.learn(m2, b"peerB", 1.0)
    assert t.lookup(m1, 5.0) == LOCAL
    assert t.lookup(m2, 5.0) == b"peerB"
    v = t.version
    assert t.learn(m2, LOCAL, 6.0)  # moved
    assert t.version > v
    assert t.lookup(m2, 6.0) == LOCAL
    v = t.version
    assert t.lookup(m1, 20.0) is None  # expired on lookup
    assert t.version > v
    assert t.lookup(b"\x02" * 6, 0.0) is None
    t.learn(m1, b"x", 0.0)
    v = t.version
    assert t.expire(5.0) == 0
    assert t.version == v
    assert t.expire(100.0) == 2
    assert t.version > v
    assert len(t) == 0
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(b"\x01\x00\x5e\x00\x00\x01")
    assert not is_multicast(m1)


def test_sessions_ask_for_rekeying_before_counters_could_wrap() -> None:
    from meshrouter.constants import NONCE_HARD_LIMIT, REKEY_AFTER_MESSAGES
    from meshrouter.errors import LocalProtocolError

    a, _ = pair()
    assert not a.needs_rekey()
    a.seal(PacketType.DATA, b"x")
    assert a.messages_sealed == 1
    assert a.needs_rekey(limit=1)
    assert REKEY_AFTER_MESSAGES < NONCE_HARD_LIMIT < 1 << 64
    a._sealer.counter = NONCE_HARD_LIMIT
    assert a.needs_rekey()
    with pytest.raises(LocalProtocolError, match="rekey"):
        a.seal(PacketType.DATA, b"x")
