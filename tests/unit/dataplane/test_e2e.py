"""Sealed end to end through a relay (issue 25): A's frames for C, whose
route goes through B, are sealed with A's own session with C inside B's
hop; B opens only its hop and passes the rest on unread.  Three real
forwarders on loopback, either loop; B's plaintexts are watched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.dataplane import tso
from meshrouter.dataplane.sessionstate import Mode, native_available
from meshrouter.proto.wire import HEADER, MAX_HOPS, ROUTE_AND_LEN, PacketType
from meshrouter.testing.fwdpair import (
    A_NAME,
    B_NAME,
    C_NAME,
    DST_MAC,
    SRC_MAC,
    VNET,
    Side,
    cross_relayed,
    delivered,
    relayed,
)
from meshrouter.testing.tcpframes import superframe

PLANES: list[Mode] = ["python", *(["c"] if native_available() else [])]  # type: ignore[list-item]


def marked(size: int, i: int) -> bytes:
    """A frame whose payload says what it is, over and over."""
    eth = DST_MAC + SRC_MAC + b"\x08\x00"
    body = (b"CLEARTEXT-%d-" % i) * (size // 12 + 1)
    return VNET + eth + body[: size - len(eth)]


@contextmanager
def watched(
    planes: tuple[Mode, Mode, Mode], *, e2e: bool = True, pure: bool = False
) -> Iterator[tuple[Side, Side, Side, list[bytes]]]:
    """``relayed`` with every plaintext B opens recorded."""
    with relayed(planes, e2e=e2e, pure=pure) as (a, b, c):
        seen: list[bytes] = []
        deliver = b.fwd.receiver._deliver

        def spy(session: object, plain: memoryview, now: float) -> None:
            seen.append(bytes(plain))
            deliver(session, plain, now)  # type: ignore[arg-type]

        b.fwd.receiver._deliver = spy  # type: ignore[method-assign]
        yield a, b, c, seen


def counters(side: Side) -> dict[str, int]:
    return side.fwd.statistics().counters


@pytest.mark.parametrize("plane", PLANES)
def test_the_relay_passes_on_what_it_cannot_read(plane: Mode) -> None:
    with watched((plane, plane, plane)) as (a, b, c, seen):
        small, mid = marked(64, 1), marked(1300, 2)
        # At the container MTU (1376) a frame fits one datagram, not one inside
        # another's message: sealed as two (by Python); so is a large one.
        full, big = marked(1400, 3), marked(9000, 3)
        sf = superframe(DST_MAC, SRC_MAC, 7)
        for _ in range(2):  # a C loop learns nothing that skips the sealing
            for f in (small, mid, full, big):
                assert cross_relayed(a, b, c, [f]) == [f]
        got = cross_relayed(a, b, c, [sf])
        assert [x for g in got for x in tso.segment_untrusted(g)] == tso.segment_untrusted(sf)
        assert seen, "B relayed nothing"
        for plain in seen:
            assert b"CLEARTEXT" not in plain
            assert sf[-64:] not in plain
            assert plain[:12] == A_NAME + C_NAME  # route header: all B reads
        relayed = counters(b)["messages_relayed"]  # by Python (seen) or by B's C loop
        assert relayed >= len(seen)
        assert counters(b)["relayed_unread"] == relayed
        assert counters(a)["sealed_end_to_end"] == relayed
        assert counters(c)["opened_end_to_end"] >= 7
        for side in (a, b, c):
            assert side.fwd.statistics().drops == {}
        if plane == "c":  # once taught, the C loops seal and open them, with no Python
            from meshrouter.dataplane.sessionstate import native

            assert native is not None
            sealed = native.COUNTS.index("c_sealed_end_to_end")
            opened = native.COUNTS.index("c_opened_end_to_end")
            assert a.fwd.cloop is not None
            assert c.fwd.cloop is not None
            assert a.fwd.cloop.counts()[sealed] == 2 + len(tso.segment_untrusted(sf))
            assert c.fwd.cloop.counts()[opened] >= 3
            assert b.fwd.cloop is not None
            assert b.fwd.cloop.counts()[native.COUNTS.index("c_messages_relayed")] > len(seen)
        # C learnt the sender's MAC against A, not against B.
        assert c.fwd.macs.lookup(SRC_MAC, time.monotonic()) == A_NAME


def test_without_the_extension_the_model_cuts_inside_the_hop() -> None:
    with watched(("python", "python", "python"), pure=True) as (a, b, c, seen):
        c.fwd.receiver.joiner = None
        sf = superframe(DST_MAC, SRC_MAC, 8)
        assert cross_relayed(a, b, c, [sf]) == tso.segment_untrusted(sf)
        assert all(sf[-64:] not in p for p in seen)
        assert c.fwd.statistics().drops == {}


@pytest.mark.parametrize("plane", PLANES)
def test_a_peer_that_cannot_open_them_gets_frames_resealed_by_the_relay(plane: Mode) -> None:
    """The spy sees clear text when there is any to see (so the test above
    can fail): a peer of protocol 1 gets what B re-seals (B's C loop once
    its Python relayed the first)."""
    with watched((plane, plane, plane), e2e=False) as (a, b, c, seen):
        frames = [marked(200, 4), marked(1400, 5), superframe(DST_MAC, SRC_MAC, 9)]
        for f in frames:
            got = cross_relayed(a, b, c, [f])
            assert [x for g in got for x in tso.segment_untrusted(g)] == tso.segment_untrusted(f)
        assert any(b"CLEARTEXT-4" in p for p in seen)
        assert counters(a).get("sealed_end_to_end", 0) == 0
        assert counters(b).get("relayed_unread", 0) == 0
        assert counters(b)["messages_relayed"] >= 2 + len(tso.segment_untrusted(frames[2]))
        # A message at its hop limit is not passed on, by either loop.
        to_b = a.table.by_name[B_NAME].session
        spent = to_b.seal(PacketType.DATA, ROUTE_AND_LEN.pack(A_NAME, C_NAME, 0, 100) + frames[0])
        a.fwd.udp.sock.sendto(spent[0], b.fwd.udp.sock.getsockname())
        b.fwd.pump(time.monotonic())
        assert b.fwd.statistics().drops == {"hop_limit": 1}


@pytest.mark.parametrize("plane", PLANES)
def test_a_relay_that_forges_an_inner_message_gets_nothing_through(plane: Mode) -> None:
    """B (compromised) sends C hop messages that claim to carry A's sealed
    datagrams: unknown receiver indices, B's own session's index, A's index
    with garbage, and a real one replayed.  None reaches C's TAP; each is
    counted."""
    with relayed((plane, plane, plane)) as (a, b, c):
        f = marked(100, 5)
        assert cross_relayed(a, b, c, [f]) == [f]
        to_c = b.table.by_name[C_NAME]
        c_addr = c.fwd.udp.sock.getsockname()
        head = ROUTE_AND_LEN.pack(A_NAME, C_NAME, MAX_HOPS, 0)
        a_to_c = a.table.by_name[C_NAME].session
        real = a_to_c.seal(
            PacketType.DATA, ROUTE_AND_LEN.pack(A_NAME, C_NAME, MAX_HOPS, len(f)) + f
        )
        at_c = c.table.by_name[A_NAME].session
        wrong_route = a_to_c.seal(  # A's key, but a message from A to someone else
            PacketType.DATA, ROUTE_AND_LEN.pack(A_NAME, A_NAME, MAX_HOPS, len(f)) + f
        )

        def header(index: int) -> bytes:
            return HEADER.pack(PacketType.DATA, index, 1 << 40, 0, 1)

        forged = [
            header(999) + bytes(40),  # no such index
            header(to_c.session.peer_index) + bytes(40),  # B's own session with C
            header(at_c.local_index) + bytes(60),  # A's, not sealed by A
            b"\x02",  # short
            real[0],
            real[0],  # replayed
            wrong_route[0],
        ]
        for inner in forged:
            hop = to_c.session.seal(PacketType.DATA, head + inner)
            b.fwd.udp.sock.sendto(hop[0], c_addr)
        c.fwd.pump(time.monotonic())
        assert delivered(c) == [f]  # the real one, once
        drops = c.fwd.statistics().drops
        assert drops["e2e_unknown"] == 2
        assert drops["auth_failed"] == 1
        assert drops["short_datagram"] == 1
        assert drops["replayed"] == 1
        assert drops["e2e_bad"] == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8), st.sampled_from(PLANES)
)
def test_whatever_a_relay_wraps_is_counted_and_never_delivered(
    inners: list[bytes], plane: Mode
) -> None:
    """B wraps arbitrary bytes as sealed-for-C datagrams from A (some with a
    real header of A's session in front): C drops and counts each, delivers
    nothing, and still takes A's next real frame (either loop; the C loop
    has opened one of A's before, so it looks at them first)."""
    with relayed(("python", "python", plane)) as (a, b, c):
        first = marked(100, 7)
        assert cross_relayed(a, b, c, [first]) == [first]
        to_c = b.table.by_name[C_NAME].session
        at_c = c.table.by_name[A_NAME].session
        c_addr = c.fwd.udp.sock.getsockname()
        head = ROUTE_AND_LEN.pack(A_NAME, C_NAME, MAX_HOPS, 0)
        for k, inner in enumerate(inners):
            if k % 2:  # A's index and a plausible header: only authentication stops it
                inner = HEADER.pack(PacketType.DATA, at_c.local_index, k, 0, 1) + inner
            b.fwd.udp.sock.sendto(to_c.seal(PacketType.DATA, head + inner)[0], c_addr)
        c.fwd.pump(time.monotonic())
        with pytest.raises(BlockingIOError):
            c.tap.recv(70_000)
        assert sum(c.fwd.statistics().drops.values()) == len(inners)
        f = marked(100, 6)
        assert cross_relayed(a, b, c, [f]) == [f]
