"""The superframe segmenter and coalescer (meshrouter/dataplane/tso.py), under hypothesis:
any superframe in the kernel's form, cut and put back, is the same bytes;
every segment's checksums are valid (and scapy agrees); loss and reordering
never join what is not contiguous; garbage raises only BadPacket."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.base.errors import BadPacket
from meshrouter.dataplane import tso
from meshrouter.testing.tcpframes import build

FLAG_SETS = [tso.ACK, tso.ACK | tso.PSH, tso.ACK | tso.FIN, tso.ACK | tso.PSH | tso.FIN]


@st.composite
def superframes(draw: st.DrawFn) -> tuple[bytes, int]:
    """Superframes of both versions, with options, any MSS (odd ones too),
    FIN/PSH/URG/CWR, up to 64 segments."""
    v = draw(st.sampled_from([4, 6]))
    ip_opts = draw(st.integers(0, 10)) if v == 4 else 0
    tcp_opts = draw(st.integers(0, 10))
    mss = draw(st.one_of(st.integers(1, 64), st.integers(536, 1460), st.integers(1461, 9000)))
    # The whole IP packet fits 64 KiB (what a GSO frame may carry), v6 too.
    room = 65535 - (20 + 4 * ip_opts if v == 4 else 40) - (20 + 4 * tcp_opts)
    payload_len = draw(st.integers(mss + 1, max(mss + 1, min(64 * mss, room))))
    flags = draw(st.sampled_from(FLAG_SETS))
    if draw(st.booleans()):
        flags |= tso.CWR | tso.ECE
    if draw(st.booleans()):
        flags |= tso.URG
    rnd = random.Random(draw(st.integers(0, 2**32)))
    return build(
        v, rnd, ip_opts=ip_opts, tcp_opts=tcp_opts, mss=mss, payload_len=payload_len, flags=flags
    )


def parts(frame: bytes) -> tuple[int, int, int, int]:
    """(IP version, TCP header offset, payload offset, seq) of a frame after its virtio header."""
    h = tso._Headers(frame[tso.VNET_LEN :])
    return h.version, h.tcp, h.end, h.seq


@settings(max_examples=150, deadline=None)
@given(superframes())
def test_cut_and_put_back_is_the_same_superframe(case: tuple[bytes, int]) -> None:
    sf, mss = case
    segs = tso.segment_untrusted(sf)
    assert len(segs) == -(-(len(sf) - tso.VNET_LEN - parts(sf)[2]) // mss)
    assert tso.coalesce(segs) == [sf]


@settings(max_examples=100, deadline=None)
@given(superframes())
def test_every_segment_is_valid_on_its_own(case: tuple[bytes, int]) -> None:
    sf, mss = case
    _version, _tcp_at, end, seq0 = parts(sf)
    for partial, segs in (
        (True, tso.segment_untrusted(sf)),
        (False, tso.segment_untrusted(sf, full=True)),
    ):
        offset = 0
        for i, seg in enumerate(segs):
            flags, gso, _hl, _gs, cstart, coff = tso.VNET.unpack_from(seg)
            assert gso == tso.GSO_NONE
            frame = seg[tso.VNET_LEN :]
            v, t, e, seq = parts(seg)
            body = len(frame) - e
            assert body == mss or (i == len(segs) - 1 and 0 < body <= mss)
            assert seq == (seq0 + offset) & 0xFFFFFFFF
            assert frame[e:] == sf[tso.VNET_LEN + end + offset : tso.VNET_LEN + end + offset + body]
            offset += body
            ip = frame[tso.ETH_LEN : t]
            if v == 4:
                assert tso._fold(tso._sum16(ip)) == 0xFFFF  # the header checksum verifies
                assert struct.unpack_from("!H", ip, 2)[0] == len(frame) - tso.ETH_LEN
            else:
                assert struct.unpack_from("!H", ip, 4)[0] == len(frame) - t
            check = struct.unpack_from("!H", frame, t + 16)[0]
            if partial:
                assert (flags, cstart, coff) == (tso.NEEDS_CSUM, t, 16)
                assert check == tso.partial_checksum(ip, v, len(frame) - t)
            else:
                assert flags == 0
                total = tso._pseudo(ip, v, len(frame) - t) + tso._sum16(frame[t:])
                assert tso._fold(total) == 0xFFFF  # the full checksum verifies
            tflags = frame[t + 13]
            if i < len(segs) - 1:
                assert not tflags & (tso.FIN | tso.PSH)
            if i:
                assert not tflags & (tso.CWR | tso.URG)
        assert offset == len(sf) - tso.VNET_LEN - end


def test_scapy_agrees_with_the_checksums() -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    for version in (4, 6):
        # No options: scapy parses random option bytes and rebuilds them otherwise.
        sf, _ = build(version, random.Random(version), tcp_opts=0, flags=tso.ACK | tso.FIN)
        for seg in tso.segment_untrusted(sf, full=True)[:5]:
            pkt = Ether(seg[tso.VNET_LEN :])
            ours = pkt[TCP].chksum
            del pkt[TCP].chksum
            if version == 4:
                ours_ip = pkt[IP].chksum
                del pkt[IP].chksum
                assert Ether(bytes(pkt))[IP].chksum == ours_ip
            else:
                assert IPv6 in pkt
            assert Ether(bytes(pkt))[TCP].chksum == ours


@settings(max_examples=100, deadline=None)
@given(superframes(), st.randoms(use_true_random=False))
def test_loss_and_reordering_never_join_across_a_gap(
    case: tuple[bytes, int], rnd: random.Random
) -> None:
    """What arrives of a cut superframe, in any order and with holes, comes out
    as superframes and segments that each carry one contiguous, correct slice."""
    sf, _mss = case
    _v, _t, end, seq0 = parts(sf)
    payload = sf[tso.VNET_LEN + end :]
    segs = tso.segment_untrusted(sf)
    kept = [s for s in segs if rnd.random() > 0.2]
    if rnd.random() < 0.3:
        rnd.shuffle(kept)
    got = tso.coalesce(kept)
    delivered = 0
    for frame in got:
        _, _, e, seq = parts(frame)
        body = frame[tso.VNET_LEN + e :]
        start = (seq - seq0) & 0xFFFFFFFF
        assert body == payload[start : start + len(body)]
        delivered += len(body)
        if tso.VNET.unpack_from(frame)[1] != tso.GSO_NONE:  # a superframe: valid as one
            assert len(tso.segment_untrusted(frame)) >= 2
    assert delivered == sum(len(s) - tso.VNET_LEN - end for s in kept)


def test_flows_other_frames_and_flags_end_runs() -> None:
    a, _ = build(4, random.Random(1))
    segs = tso.segment_untrusted(a)
    udp = tso.VNET.pack(0, 0, 0, 0, 0, 0) + bytes(14) + b"\x45" + bytes(40)
    # A frame of no TCP flow passes through as it came, and does not split the run.
    got = tso.coalesce([segs[0], udp, *segs[1:]])
    assert got[0] == a
    assert got[1] == udp
    # Two flows interleaved: each put back whole.
    b, _ = build(6, random.Random(2), mss=1000)
    other = tso.segment_untrusted(b)
    mixed = [x for pair in zip(segs, other, strict=False) for x in pair]
    mixed += segs[len(other) :] + other[len(segs) :]
    assert sorted(tso.coalesce(mixed)) == sorted([a, b])
    # Nothing that is not a GSO TCP frame is cut.
    assert tso.segment_untrusted(udp) == [udp]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([tso.GSO_TCPV4, tso.GSO_TCPV6, 3, 0x81]))
def test_garbage_raises_only_bad_packet(body: bytes, gso: int) -> None:
    data = tso.VNET.pack(tso.NEEDS_CSUM, gso, 54, 100, 34, 16) + body
    with contextlib.suppress(BadPacket):
        tso.segment_untrusted(data)
    tso.coalesce([data, body, b""])  # never raises


def test_a_superframe_that_lies_is_refused() -> None:
    sf, _ = build(4, random.Random(3))
    with pytest.raises(BadPacket, match="GSO type and IP version disagree"):
        tso.segment_untrusted(sf[:1] + bytes([tso.GSO_TCPV6]) + sf[2:])
    zero_mss = sf[:4] + b"\0\0" + sf[6:]  # gso_size is bytes 4-5
    with pytest.raises(BadPacket, match="without payload or MSS"):
        tso.segment_untrusted(zero_mss)
