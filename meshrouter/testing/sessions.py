"""Two data sessions keyed to each other, and a way to feed one datagrams (no sockets)."""

from __future__ import annotations

from meshrouter.dataplane.session import DataSession
from meshrouter.proto.crypto import Suite
from meshrouter.proto.wire import PacketType, parse_header_untrusted


def session_pair(*, pure: bool = False) -> tuple[DataSession, DataSession]:
    """Sessions a (index 5) and b (index 9) that talk to each other; path MTU
    not yet probed.  ``pure``: their state in Python, as without the extension."""
    k1, k2 = b"1" * 32, b"2" * 32
    a = DataSession(
        suite=Suite.AEGIS128L, send_key=k1, recv_key=k2, local_index=5, peer_index=9, pure=pure
    )
    b = DataSession(
        suite=Suite.AEGIS128L, send_key=k2, recv_key=k1, local_index=9, peer_index=5, pure=pure
    )
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
