"""The C data-plane loop against the Python one: same wire, same decisions, same counters.

Two real forwarders back to back (socketpair TAPs, loopback UDP); each side
runs the C loop or the Python loop, so every pairing proves the two speak the
same wire format.  The C loop's state (nonce counter, replay window) is
checked against the Python implementation it replaces.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrouter.dataplane import sessionstate as dataplane
from meshrouter.dataplane.sessionstate import Mode, PySessionState, new_state
from meshrouter.proto.crypto import Suite
from meshrouter.proto.replay import ReplayWindow
from meshrouter.testing.fwdpair import (
    A_NAME,
    DST_MAC,
    SRC_MAC,
    VNET,
    Side,
    cross,
    frame,
    pair,
)
from meshrouter.testing.tcpframes import superframe

native = pytest.importorskip(
    "meshrouter.dataplane._dataplane", reason="the C data plane is not built"
)

MODES: list[tuple[Mode, Mode]] = [("c", "c"), ("c", "python"), ("python", "c")]


def counters(side: Side) -> dict[str, int]:
    return side.fwd.statistics().counters


@pytest.mark.parametrize("modes", MODES, ids=["c-c", "c-python", "python-c"])
@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain-udp"])
def test_both_loops_speak_the_same_wire(modes: tuple[Mode, Mode], offload: bool) -> None:
    with pair(offload, modes) as (a, b):
        assert (a.fwd.dataplane, b.fwd.dataplane) == modes
        small = frame(64)
        large = frame(62000)[:-3] + b"end"
        burst = [frame(100)[:-2] + i.to_bytes(2, "big") for i in range(40)]
        back = VNET + SRC_MAC + DST_MAC + small[22:]  # a reply, to a's MAC
        for _ in range(3):  # the first crossing teaches the C loop its lanes and MACs
            assert cross(a, b, [small]) == [small]
            assert cross(a, b, [large]) == [large]
            assert cross(a, b, burst) == burst
            assert cross(b, a, [back]) == [back]
        assert a.fwd.statistics().drops == {}
        assert b.fwd.statistics().drops == {}
        assert b.fwd.macs.lookup(SRC_MAC, time.monotonic()) == A_NAME
        if modes[0] == "c":  # frames went out without Python once the lane was open
            assert counters(a)["frames_sent"] > 0
        if modes[1] == "c":  # ... and came in without Python once the MAC was seen
            assert counters(b)["messages_delivered"] > 0
        # The two sides agree on what was sent and received, whoever counted it.
        sa, sb = a.link.session.state, b.link.session.state
        assert (sa.tx_messages, sa.tx_packets) == (sb.rx_messages, sb.rx_packets)
        assert sa.tx_frames == sb.rx_frames == 3 * (2 + 40)
        assert sb.tx_frames == sa.rx_frames == 3
        # The 40 small frames of each burst shared a few one-datagram messages,
        # whichever loop packed them (13 to a 1,472-byte datagram).
        assert sa.tx_messages <= 3 * (2 + 8)
        assert sa.tx_packets == sa.tx_messages + 3 * 42  # the 62 KB frame: 43 datagrams


@pytest.mark.parametrize("modes", MODES, ids=["c-c", "c-python", "python-c"])
@pytest.mark.parametrize(
    ("bind", "reach"),
    [("::1", None), ("::", "127.0.0.1"), ("::", "::1")],
    ids=["ipv6", "dual-stack-to-ipv4", "dual-stack-to-ipv6"],
)
def test_both_loops_carry_frames_over_ipv6_and_dual_stack_sockets(
    modes: tuple[Mode, Mode], bind: str, reach: str | None
) -> None:
    """Peers over IPv6, and IPv4 peers of a dual-stack socket (which reads
    them as ::ffff:a.b.c.d): the C loop recognises the sender (it forwards
    without Python once taught), both loops send GSO batches, and the
    address the link follows is the one it was given, not a mapped one."""
    with pair(True, modes, bind=bind, reach=reach) as (a, b):
        small, large = frame(64), frame(62000)
        for _ in range(3):
            assert cross(a, b, [small]) == [small]
            assert cross(a, b, [large]) == [large]
            assert cross(b, a, [VNET + SRC_MAC + DST_MAC + small[22:]]) != []
        assert a.fwd.statistics().drops == {}
        assert b.fwd.statistics().drops == {}
        host = reach or bind
        assert b.link.udp_addr is not None
        assert b.link.udp_addr[0] == host  # followed from what was heard: same spelling
        if modes[1] == "c":
            assert counters(b)["messages_delivered"] > 0
            assert counters(b).get("datagrams_to_python", 0) < 10  # not each one


@pytest.mark.parametrize("size", [1000, 62000], ids=["one-datagram", "gso-gro-message"])
def test_the_c_loop_forwards_without_python_once_taught(size: int) -> None:
    with pair(True, ("c", "c")) as (a, b):
        f = frame(size)
        assert cross(a, b, [f]) == [f]
        assert cross(a, b, [f]) == [f]
        before_a, before_b = counters(a), counters(b)
        for _ in range(20):
            assert cross(a, b, [f]) == [f]
        after_a, after_b = counters(a), counters(b)
        if size > 1472:  # 43 datagrams each, sent as one GSO sendmsg, read as one GRO batch
            assert after_a["gso_sends"] - before_a.get("gso_sends", 0) == 20
        assert after_a["frames_sent"] - before_a.get("frames_sent", 0) == 20
        assert after_a.get("frames_to_python", 0) == before_a.get("frames_to_python", 0)
        assert after_b["messages_delivered"] - before_b.get("messages_delivered", 0) == 20
        assert after_b.get("datagrams_to_python", 0) == before_b.get("datagrams_to_python", 0)


def test_a_withdrawn_link_takes_no_frames_from_the_c_loop() -> None:
    with pair(True, ("c", "c")) as (a, b):
        f = frame(64)
        for _ in range(3):
            assert cross(a, b, [f]) == [f]
        b.table.withdraw(b.link)  # the C loop must forget its binding
        assert cross(a, b, [f]) == []
        assert b.fwd.statistics().drops["unknown_receiver"] == 1
        link = a.link
        sent = link.session.state.tx_messages
        a.table.withdraw(link)  # ... and its lane
        a.tap.send(f)
        a.fwd.pump(time.monotonic())
        assert link.session.state.tx_messages == sent
        assert a.fwd.statistics().drops == {}
        assert not any(k.startswith("internal error") for k in counters(a))


def test_the_c_loop_follows_mac_moves_and_a_lost_address() -> None:
    with pair(True, ("c", "c")) as (a, b):
        f = frame(64)
        for _ in range(3):
            assert cross(a, b, [f]) == [f]
        session = a.link.session.state
        sent = session.tx_messages
        # The destination MAC moves behind our own bridge: nothing for the mesh.
        a.fwd.macs.learn(b"\x0a" * 6, b"", time.monotonic())
        # (the forwarder sees its table's version move and the C loop forgets)
        assert cross(a, b, [f]) == []
        assert session.tx_messages == sent
        # Back at the peer; then the peer's address is lost: nothing is sent.
        a.fwd.macs.learn(b"\x0a" * 6, b.name, time.monotonic())
        assert cross(a, b, [f]) == [f]
        assert cross(a, b, [f]) == [f]
        a.link.udp_addr = None
        sent = session.tx_messages
        assert cross(a, b, [f]) == []
        assert session.tx_messages == sent


counters_st = st.lists(st.integers(min_value=0, max_value=12_000), max_size=300)


@settings(max_examples=200, deadline=None)
@given(counters_st)
def test_the_c_replay_window_is_the_python_one(seq: list[int]) -> None:
    c = new_state(Suite.AEGIS128L, b"k" * 32, b"r" * 32, 1)
    assert isinstance(c, native.Session)
    py = ReplayWindow()
    for n in seq:
        assert c.would_accept(n) == py.would_accept(n)
        assert c.accept(n) == py.accept(n)
        assert c.top == py.top


@pytest.mark.parametrize("pure", [True, False], ids=["python-state", "c-state"])
def test_nonce_counters_stop_at_their_limit(pure: bool) -> None:
    state = new_state(Suite.XCHACHA20POLY1305, b"k" * 32, b"r" * 32, 1, pure=pure, limit=3)
    assert isinstance(state, PySessionState) == pure
    assert [state.next_counter() for _ in range(5)] == [0, 1, 2, -1, -1]
    assert state.counter == 3


def test_asking_for_a_c_data_plane_that_is_not_built_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane, "native", None)
    assert not dataplane.use_native("auto")
    with pytest.raises(ValueError, match="C compiler"):
        dataplane.use_native("c")
    assert isinstance(dataplane.new_state(Suite.AEGIS128L, b"k" * 32, b"r" * 32, 1), PySessionState)


GSO_SEGMENT = 103  # UDP_SEGMENT


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 7]),  # type
            st.integers(0, 2**64 - 1),  # counter
            st.integers(0, 70),  # segment
            st.integers(0, 70),  # segments
            st.binary(min_size=0, max_size=300),  # the rest
        ),
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_the_c_loop_survives_forged_datagrams_for_a_known_link(
    forged: list[tuple[int, int, int, int, bytes]], coalesced: bool
) -> None:
    """Headers naming the real receiver index (so the C loop gets past the
    binding and tries to open them), alone or as one GSO send that the
    receiver reads GRO-coalesced: all dropped and counted, nothing reaches the
    TAP, and the link still works afterwards."""
    with pair(True, ("c", "c")) as (a, b):
        f = frame(200)
        for _ in range(2):
            assert cross(a, b, [f]) == [f]
        index = b.link.session.local_index
        dgrams = [
            bytes([t]) + index.to_bytes(4, "big") + c.to_bytes(8, "big") + bytes([sg, ns]) + rest
            for t, c, sg, ns, rest in forged
        ]
        addr = b.fwd.udp.sock.getsockname()
        raw = a.fwd.udp.sock  # the peer's own address: only authenticity stops them
        if coalesced and len(dgrams) > 1:
            size = max(len(d) for d in dgrams)
            batch = b"".join(d.ljust(size, b"\0") for d in dgrams[:-1]) + dgrams[-1]
            raw.sendmsg([batch], [(17, GSO_SEGMENT, size.to_bytes(2, "little"))], 0, addr)
        else:
            for d in dgrams:
                raw.sendto(d, addr)
        before = counters(b)
        b.fwd.pump(time.monotonic())
        after = counters(b)
        # Each went back to Python (dropped, or kept as part of a message that
        # never completes), none was taken by the C loop.
        assert after["datagrams_to_python"] > before.get("datagrams_to_python", 0)
        assert after.get("messages_delivered") == before.get("messages_delivered")
        with pytest.raises(BlockingIOError):
            b.tap.recv(70_000)
        assert cross(a, b, [f]) == [f]
        assert not any(k.startswith("internal error") for k in counters(b))


def test_a_router_told_to_use_a_c_loop_it_lacks_refuses_to_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshrouter.contract.config import RouterOptions
    from meshrouter.daemon.router import Router

    monkeypatch.setattr(dataplane, "native", None)
    with pytest.raises(ValueError, match=r"^--dataplane c: the C data plane is not built"):
        Router(RouterOptions(dataplane="c"), name=A_NAME, psk=b"k" * 32, nickname="h1")
    Router(RouterOptions(dataplane="auto"), name=A_NAME, psk=b"k" * 32, nickname="h1")


def tcp_superframe(seed: int, payload_len: int = 40000) -> bytes:
    """A TSO superframe from SRC_MAC to DST_MAC as the TAP hands it over."""
    return superframe(DST_MAC, SRC_MAC, seed, payload_len=payload_len)


@pytest.mark.parametrize(
    "modes", [*MODES, ("python", "python")], ids=["c-c", "c-python", "python-c", "python-python"]
)
@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain-udp"])
def test_a_tcp_superframe_crosses_as_one_message_per_segment(
    modes: tuple[Mode, Mode], offload: bool
) -> None:
    """Issue 22: each segment is sealed on its own (a lost datagram costs one
    segment), and the receiver joins them back into the superframe (the C
    loop, or the extension's Coalescer under the Python loop)."""
    from meshrouter.dataplane import tso

    with pair(offload, modes) as (a, b):
        sf = tcp_superframe(1)
        segments = tso.segment_untrusted(sf)
        for _ in range(3):  # the first crossing teaches the C loops
            sent = a.link.session.state.tx_messages
            got = cross(a, b, [sf])
            assert a.link.session.state.tx_messages - sent == len(segments)
            # Whatever was joined where, cut again it is every segment once, in order.
            assert [x for g in got for x in tso.segment_untrusted(g)] == segments
        assert got == [sf]  # joined again in C, by the C loop or for the Python one
        assert counters(b)["superframes_joined"] >= 1
        assert counters(a)["superframes_cut"] == 3
        assert a.fwd.statistics().drops == {}
        assert b.fwd.statistics().drops == {}
        sa, sb = a.link.session.state, b.link.session.state
        assert sa.tx_frames == sb.rx_frames == 3 * len(segments)


def test_without_the_extension_a_superframe_is_cut_by_the_model() -> None:
    """Without the extension the Python data plane cuts with tso.py: the same
    segments, one message each, written to the TAP as they came."""
    from meshrouter.dataplane import tso

    with pair(True, ("python", "python"), pure=True) as (a, b):
        assert not isinstance(a.link.session.state, native.Session)
        b.fwd.receiver.joiner = None  # as without the extension: nothing joins
        sf = tcp_superframe(2)
        segments = tso.segment_untrusted(sf)
        sent = a.link.session.state.tx_messages
        assert cross(a, b, [sf]) == segments
        assert a.link.session.state.tx_messages - sent == len(segments)
        assert counters(a)["superframes_cut"] == 1
        assert b.fwd.statistics().drops == {}


@pytest.mark.parametrize("mode", ["c", "python"])
def test_a_tap_without_offloads_gets_the_segments_as_they_came(mode: Mode) -> None:
    """--no-offload: nothing is joined for the TAP."""
    from meshrouter.dataplane import tso

    with pair(True, (mode, mode), join=False) as (a, b):
        sf = tcp_superframe(3)
        for _ in range(3):
            assert cross(a, b, [sf]) == tso.segment_untrusted(sf)
        assert "superframes_joined" not in counters(b)
