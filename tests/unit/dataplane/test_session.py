from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.dataplane.pmtu import SAFE_DATAGRAM
from meshrouter.proto.wire import (
    HEADER,
    FramePacker,
    PacketType,
    iter_frames_untrusted,
    parse_header_untrusted,
)
from meshrouter.testing.sessions import deliver, session_pair


def test_data_roundtrip_and_replay_dropped() -> None:
    a, b = session_pair()
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
    a, b = session_pair()
    (pkt,) = a.seal(PacketType.DATA, b"\x00\x00\x00\x05hello")
    bad = bytearray(pkt)
    bad[HEADER.size + 2] ^= 0x40
    with pytest.raises(BadPacket, match="authentication"):
        deliver(b, [bytes(bad)], 1.0)
    # A forged packet does not advance the replay window: the real one still passes.
    assert deliver(b, [pkt], 1.0)[0][0] == PacketType.DATA


@pytest.mark.parametrize("size", [SAFE_DATAGRAM, 1472])
def test_large_message_is_segmented_and_reassembled_in_any_order(size: int) -> None:
    a, b = session_pair()
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
    a, b = session_pair()
    for _ in range(20):
        deliver(b, a.seal(PacketType.DATA, bytes(5000))[1:], 1.0)
    assert b.reassembly_drops == 20 - 8
    assert len(b._partial) == 8


def test_established_needs_udp_both_ways() -> None:
    a, b = session_pair()
    assert not a.established(0.0)
    deliver(b, a.heartbeats(0.0, probe=False), 0.0)  # b hears a; a said "not heard you"
    assert b.hears_peer(0.0)
    assert not b.established(0.0)
    deliver(a, b.heartbeats(0.1, probe=False), 0.1)  # b says "heard you"
    assert a.established(0.1)
    deliver(b, a.heartbeats(0.2, probe=False), 0.2)
    assert b.established(0.2)
    assert not a.established(10.0)  # silence: no longer established


@given(st.lists(st.binary(min_size=15, max_size=200), max_size=10))
def test_receive_garbage_raises_only_bad_packet(datagrams: list[bytes]) -> None:
    _, b = session_pair()
    for data in datagrams:
        with contextlib.suppress(BadPacket):
            _, _, counter, seg, nseg = parse_header_untrusted(data)
            b.receive_untrusted(data, counter, seg, nseg, 0.0)


@pytest.mark.parametrize("pure", [True, False], ids=["python-state", "c-state"])
def test_sessions_ask_for_rekeying_before_counters_could_wrap(pure: bool) -> None:
    from meshrouter.base.constants import NONCE_HARD_LIMIT, REKEY_AFTER_MESSAGES
    from meshrouter.base.errors import LocalProtocolError
    from meshrouter.dataplane.sessionstate import new_state
    from meshrouter.proto.crypto import Suite

    a, _ = session_pair()
    assert not a.needs_rekey()
    a.seal(PacketType.DATA, b"x")
    assert a.messages_sealed == 1
    assert a.needs_rekey(limit=1)
    assert REKEY_AFTER_MESSAGES < NONCE_HARD_LIMIT < 1 << 64
    # A state whose hard limit is 2 messages: the third is refused, never sealed.
    a.state = new_state(Suite.AEGIS128L, b"1" * 32, b"2" * 32, 9, pure=pure, limit=2)
    a.seal(PacketType.DATA, b"x")
    a.seal(PacketType.DATA, b"x")
    assert a.needs_rekey(limit=2)
    with pytest.raises(LocalProtocolError, match="rekey"):
        a.seal(PacketType.DATA, b"x")
    assert a.messages_sealed == 2
