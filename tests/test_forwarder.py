"""The forwarder's data path with in-memory doubles (socketpair TAPs, loopback UDP)."""

from __future__ import annotations

import time

import pytest

from meshrouter.crypto import Suite
from meshrouter.dataplane import DataSession
from tools.fwdpair import frame, pair

VNET = 10


def roundtrip(fa, fb, ta, tb, frames: list[bytes]) -> list[bytes]:  # type: ignore[no-untyped-def]
    for f in frames:
        ta.send(f)
    fa._drain_tap(time.monotonic())
    fb._drain_udp(time.monotonic())
    out = []
    while True:
        try:
            out.append(tb.recv(70_000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain-udp"])
def test_frames_cross_intact_small_large_and_bursts(offload: bool) -> None:
    with pair(offload) as (fa, fb, ta, tb):
        small = frame(64)
        large = frame(62000)[:-3] + b"end"
        burst = [frame(1200)[:-2] + i.to_bytes(2, "big") for i in range(40)]
        assert roundtrip(fa, fb, ta, tb, [small]) == [small]
        assert roundtrip(fa, fb, ta, tb, [large]) == [large]
        assert roundtrip(fa, fb, ta, tb, burst) == burst
        # The burst shared messages: far fewer than one per frame.
        assert fa.peers[next(iter(fa.peers))].session.tx_messages < 3 + 10
        assert fb.drops == {}
        # The receiver learnt the sender's MAC against the sending peer.
        assert fb.macs.lookup(b"\x0b" * 6, time.monotonic()) == fa.me


def test_garbage_and_replays_are_counted_not_fatal() -> None:
    with pair() as (fa, fb, ta, tb):
        addr = fb.udp.sock.getsockname()
        raw = fa.udp.sock
        for junk in (b"", b"\x01", bytes(40), b"\x01" + bytes(14) + b"x" * 50, b"\x09" * 100):
            raw.sendto(junk, addr)
        fb._drain_udp(time.monotonic())
        assert sum(fb.drops.values()) == 5
        # A real datagram, captured and sent twice: the copy is dropped as a replay.
        ta.send(frame(64))
        fa._drain_tap(time.monotonic())
        pkt, _ = fb.udp.sock.recvfrom(2048)
        raw.sendto(pkt, addr)
        raw.sendto(pkt, addr)
        fb._drain_udp(time.monotonic())
        assert fb.drops["replayed or too old"] == 1
        assert len([tb.recv(70_000)]) == 1


def test_lane_follows_mac_moves_and_new_sessions() -> None:
    """Frames to a known MAC take the lane (no lookup) only while nothing that
    decided their way has changed."""
    with pair() as (fa, fb, ta, tb):
        f = frame(64)
        assert roundtrip(fa, fb, ta, tb, [f]) == [f]
        assert fa._lanes  # the way to 0a:... is remembered
        session = fa.peers[fb.me].session
        sent = session.tx_messages
        assert roundtrip(fa, fb, ta, tb, [f]) == [f]
        assert session.tx_messages == sent + 1
        # The destination MAC moves behind our own bridge: nothing for the mesh.
        fa.macs.learn(b"\x0a" * 6, b"", time.monotonic())
        assert roundtrip(fa, fb, ta, tb, [f]) == []
        assert session.tx_messages == sent + 1
        # It comes back to the peer, which reconnected: the new session is used.
        fa.macs.learn(b"\x0a" * 6, fb.me, time.monotonic())
        keys = {"send_key": b"1" * 32, "recv_key": b"2" * 32}
        fresh = DataSession(suite=Suite.AEGIS128L, local_index=5, peer_index=9, **keys)
        fresh.datagram_size = 1472
        fa.peers[fb.me].session = fresh
        ta.send(f)
        fa._drain_tap(time.monotonic())
        assert fresh.tx_messages == 1
        assert session.tx_messages == sent + 1
        # The peer's UDP address is gone (it is reconnecting): nothing is sent,
        # and nothing counts as an internal error.
        fa.peers[fb.me].udp_addr = None
        ta.send(f)
        fa._drain_tap(time.monotonic())
        assert fresh.tx_messages == 1
        assert not any(k.startswith("internal error") for k in fa.counters)
