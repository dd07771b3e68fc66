"""The C segmenter and coalescer (``_dataplane.segment``/``coalesce``, what the
C loop runs per superframe) held to the reference model ``tso`` byte for byte,
under hypothesis: the same segments, the same superframes back, the same
result after loss and reordering, and garbage that never crashes them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.dataplane import tso
from meshrouter.proto.crypto import Suite
from meshrouter.testing.tcpframes import build

from .test_tso import parts, superframes

native = pytest.importorskip(
    "meshrouter.dataplane._dataplane", reason="the C data plane is not built"
)


@settings(max_examples=150, deadline=None)
@given(superframes(), st.booleans())
def test_c_cuts_as_the_model_cuts(case: tuple[bytes, int], full: bool) -> None:
    sf, _mss = case
    assert native.segment(sf, full=full) == tso.segment_untrusted(sf, full=full)


@settings(max_examples=150, deadline=None)
@given(superframes())
def test_c_puts_back_the_same_superframe(case: tuple[bytes, int]) -> None:
    sf, _mss = case
    assert native.coalesce(native.segment(sf)) == [sf]


@settings(max_examples=150, deadline=None)
@given(superframes(), st.randoms(use_true_random=False))
def test_c_joins_what_the_model_joins_after_loss_and_reordering(
    case: tuple[bytes, int], rnd: random.Random
) -> None:
    sf, _mss = case
    segs = tso.segment_untrusted(sf)
    kept = [s for s in segs if rnd.random() > 0.2]
    if rnd.random() < 0.3:
        rnd.shuffle(kept)
    assert native.coalesce(kept) == tso.coalesce(kept)


def test_c_keeps_flows_apart_and_lets_other_frames_through() -> None:
    a, _ = build(4, random.Random(1))
    b, _ = build(6, random.Random(2), mss=1000)
    segs, other = native.segment(a), native.segment(b)
    udp = tso.VNET.pack(0, 0, 0, 0, 0, 0) + bytes(14) + b"\x45" + bytes(40)
    got = native.coalesce([segs[0], udp, *segs[1:]])
    assert sorted(got) == sorted([a, udp])  # the UDP frame went first: another flow
    mixed = [x for pair in zip(segs, other, strict=False) for x in pair]
    mixed += segs[len(other) :] + other[len(segs) :]
    assert sorted(native.coalesce(mixed)) == sorted([a, b])
    assert native.segment(udp) is None  # nothing but a TCP superframe is cut
    # Nine connections at once (more than the coalescer holds): all arrive whole.
    many = [build(4, random.Random(10 + i), payload_len=5000)[0] for i in range(9)]
    cut = [native.segment(x) for x in many]
    interleaved = [s[i] for i in range(max(map(len, cut))) for s in cut if i < len(s)]
    got = native.coalesce(interleaved)
    assert sum(len(f) for f in got) >= sum(len(x) for x in many)  # headers repeat when split
    assert sorted(native.coalesce(native.segment(x)) == [x] for x in many) == [True] * 9


def test_a_pure_ack_of_the_flow_comes_after_the_data_it_follows() -> None:
    sf, _ = build(4, random.Random(4), flags=tso.ACK)
    segs = native.segment(sf)
    end = parts(segs[0])[2]
    ack = bytearray(segs[0][: tso.VNET_LEN + end])  # the same connection, no payload
    got = native.coalesce([*segs[:3], bytes(ack), *segs[3:]])
    assert got[1] == bytes(ack)
    assert len(got) == 3  # a superframe of three, the ACK, a superframe of the rest
    assert got[0] != segs[0]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([tso.GSO_TCPV4, tso.GSO_TCPV6, 3, 0x81, 0]))
def test_c_survives_garbage(body: bytes, gso: int) -> None:
    flags = tso.NEEDS_CSUM
    data = tso.VNET.pack(flags, gso, 54, 100, 34, 16) + body
    got = native.segment(data)
    assert got is None or all(len(f) <= len(data) for f in got)
    out = native.coalesce([data, body, b"", data])
    assert out == [data, body, b"", data]  # no TCP segment among them: all as they came


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=54, max_size=120), max_size=20), st.integers(0, 2**32))
def test_c_coalescer_on_mangled_segments_writes_every_byte_once(
    junk: list[bytes], seed: int
) -> None:
    """Real segments with bytes flipped here and there, between garbage:
    nothing crashes and every frame that is not joined comes out as it came."""
    rnd = random.Random(seed)
    sf, _ = build(rnd.choice([4, 6]), rnd, payload_len=rnd.randrange(100, 9000), mss=700)
    segs = [bytearray(s) for s in native.segment(sf)]
    for s in segs:
        if rnd.random() < 0.3:
            s[rnd.randrange(len(s))] ^= 1 << rnd.randrange(8)
    frames = [bytes(s) for s in segs] + [tso.VNET.pack(1, 0, 0, 0, 0, 0) + j for j in junk]
    rnd.shuffle(frames)
    out = native.coalesce(frames)
    assert len(out) <= len(frames)
    assert sum(map(len, out)) <= sum(map(len, frames))  # joining drops repeated headers only
    inputs = set(frames)
    payloads = {x[tso.VNET_LEN + parts(x)[2] :] for x in inputs if _tcp(x)}
    for f in out:
        if f in inputs:
            continue  # not joined: exactly as it came
        # Joined: a GSO superframe that cuts into frames whose payloads all came in.
        assert tso.VNET.unpack_from(f)[1] in (tso.GSO_TCPV4, tso.GSO_TCPV6)
        cut = native.segment(f)
        assert cut is not None
        assert len(cut) >= 2
        assert all(c[tso.VNET_LEN + parts(c)[2] :] in payloads for c in cut)


def _tcp(frame: bytes) -> bool:
    try:
        parts(frame)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("suite", list(Suite), ids=[s.name.lower() for s in Suite])
def test_sealed_segments_open_one_by_one(suite: Suite) -> None:
    """Session.seal_segments: one message per datagram, each opened alone by
    the Python session, its frames the segments the model cuts (MSS cut down
    to what fits the datagram)."""
    from meshrouter.dataplane.gso import SendBuffer
    from meshrouter.dataplane.session import DataSession
    from meshrouter.proto.wire import ROUTE_AND_LEN, iter_frames_untrusted, parse_header_untrusted

    key_a, key_b = bytes(range(32)), bytes(range(32, 64))
    tx = DataSession(suite=suite, send_key=key_a, recv_key=key_b, local_index=1, peer_index=2)
    rx = DataSession(
        suite=suite,
        send_key=key_b,
        recv_key=key_a,
        local_index=2,
        peer_index=1,
        pure=True,
    )
    tx.datagram_size = 1400
    sf, _ = build(4, random.Random(5), mss=1448, payload_len=30000)
    out = SendBuffer()
    count, total, stride = tx.state.seal_segments(sf, b"A" * 6, b"B" * 6, out.data)
    assert count > 1
    assert stride <= 1400
    frames = []
    for i in range(count):
        d = bytes(out.data[i * stride : min((i + 1) * stride, total)])
        _ptype, index, counter, seg, nseg = parse_header_untrusted(d)
        assert (index, seg, nseg, counter) == (2, 0, 1, i)
        plain = rx.receive_untrusted(d, counter, seg, nseg, 0.0)
        assert plain is not None
        origin, dst, _hops, _n = ROUTE_AND_LEN.unpack_from(plain)
        assert (origin, dst) == (b"A" * 6, b"B" * 6)
        frames += [bytes(f) for f in iter_frames_untrusted(plain, 13)]
    assert native.coalesce(frames) == tso.coalesce(frames)
    mss = len(frames[0]) - tso.VNET_LEN - parts(frames[0])[2]
    resized = sf[:4] + mss.to_bytes(2, "little") + sf[6:]  # the same cut, made by the model
    assert frames == tso.segment_untrusted(resized)
    assert len(tso.coalesce(frames)) == 1
    assert tx.state.tx_messages == count
