"""The forwarder's data path with in-memory doubles (socketpair TAPs, loopback UDP)."""

from __future__ import annotations

import time

import pytest

from meshrouter.dataplane.sessionstate import Mode, native_available
from meshrouter.testing.fwdpair import SRC_MAC, cross, frame, pair, probed_pair


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain-udp"])
def test_frames_cross_intact_small_large_and_bursts(offload: bool) -> None:
    with pair(offload) as (a, b):
        small = frame(64)
        large = frame(62000)[:-3] + b"end"
        burst = [frame(100)[:-2] + i.to_bytes(2, "big") for i in range(40)]
        mid = [frame(1200)[:-2] + i.to_bytes(2, "big") for i in range(10)]
        assert cross(a, b, [small]) == [small]
        assert cross(a, b, [large]) == [large]
        assert cross(a, b, burst) == burst
        # The burst shared messages: far fewer than one per frame, each in
        # one datagram (a lost datagram costs only the frames it carried).
        state = a.link.session.state
        assert state.tx_messages < 2 + 6
        assert state.tx_packets == state.tx_messages + 42  # only the 62 KB frame is cut
        # Frames too large to share a datagram go one to a message.
        before = state.tx_messages
        assert cross(a, b, mid) == mid
        assert state.tx_messages - before == len(mid)
        assert b.fwd.statistics().drops == {}
        # The receiver learnt the sender's MAC against the sending peer.
        assert b.fwd.macs.lookup(SRC_MAC, time.monotonic()) == a.name


@pytest.mark.parametrize(
    "plane",
    [
        "python",
        pytest.param("c", marks=pytest.mark.skipif(not native_available(), reason="not built")),
    ],
)
def test_garbage_replays_and_forgeries_are_counted_not_fatal(plane: Mode) -> None:
    """With either loop (the C loop hands them to the same Python paths)."""
    with pair(True, (plane, plane)) as (a, b):
        f = frame(64)
        for _ in range(2):  # the C loop has learnt the link and the MAC
            assert cross(a, b, [f]) == [f]
        addr = b.fwd.udp.sock.getsockname()
        raw = a.fwd.udp.sock
        for junk in (b"", b"\x01", bytes(40), b"\x01" + bytes(14) + b"x" * 50, b"\x09" * 100):
            raw.sendto(junk, addr)
        b.fwd.pump(time.monotonic())
        assert sum(b.fwd.statistics().drops.values()) == 5
        # A real datagram, captured and sent twice: the copy is dropped as a replay.
        a.tap.send(f)
        a.fwd.pump(time.monotonic())
        pkt, _ = b.fwd.udp.sock.recvfrom(2048)
        raw.sendto(pkt, addr)
        raw.sendto(pkt, addr)
        b.fwd.pump(time.monotonic())
        assert b.fwd.statistics().drops["replayed"] == 1
        assert b.tap.recv(70_000) == f
        with pytest.raises(BlockingIOError):
            b.tap.recv(70_000)
        # A forged copy (one bit flipped in the ciphertext) is not authentic.
        a.tap.send(f)
        a.fwd.pump(time.monotonic())
        pkt, _ = b.fwd.udp.sock.recvfrom(2048)
        raw.sendto(pkt[:-1] + bytes([pkt[-1] ^ 1]), addr)
        b.fwd.pump(time.monotonic())
        assert b.fwd.statistics().drops["auth_failed"] == 1


def test_lane_follows_mac_moves_and_new_sessions() -> None:
    """Frames to a known MAC take the lane (no lookup) only while nothing that
    decided their way has changed."""
    with pair() as (a, b):
        f = frame(64)
        assert cross(a, b, [f]) == [f]
        assert a.fwd.sender.lanes  # the way to 0a:... is remembered
        session = a.link.session
        sent = session.state.tx_messages
        assert cross(a, b, [f]) == [f]
        assert session.state.tx_messages == sent + 1
        # The destination MAC moves behind our own bridge: nothing for the mesh.
        a.fwd.macs.learn(b"\x0a" * 6, b"", time.monotonic())
        assert cross(a, b, [f]) == []
        assert session.state.tx_messages == sent + 1
        # It comes back to the peer, which reconnected: the new session is used.
        a.fwd.macs.learn(b"\x0a" * 6, b.name, time.monotonic())
        fresh, _ = probed_pair()
        link = a.replace_link(fresh)
        a.tap.send(f)
        a.fwd.drain_tap(time.monotonic())
        assert fresh.state.tx_messages == 1
        assert session.state.tx_messages == sent + 1
        # The peer's UDP address is gone (it is reconnecting): nothing is sent,
        # and nothing counts as an internal error.
        link.udp_addr = None
        a.tap.send(f)
        a.fwd.drain_tap(time.monotonic())
        assert fresh.state.tx_messages == 1
        assert not any(k.startswith("internal error") for k in a.fwd.statistics().counters)


def test_a_withdrawn_link_takes_no_frames() -> None:
    """Once the control plane withdraws a link (the connection closed), the
    forwarder neither sends on it nor accepts datagrams for its index."""
    with pair() as (a, b):
        f = frame(64)
        assert cross(a, b, [f]) == [f]
        b.table.withdraw(b.link)
        assert cross(a, b, [f]) == []
        assert b.fwd.statistics().drops["unknown_receiver"] == 1
        a.table.withdraw(a.link)
        a.tap.send(f)
        a.fwd.drain_tap(time.monotonic())
        assert a.fwd.statistics().drops == {}
