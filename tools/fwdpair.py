"""Two real Forwarders wired back to back without namespaces, for tests and benchmarks.

Each "TAP" is a SOCK_SEQPACKET socketpair (frame boundaries kept, like a TAP
device) and the UDP sockets talk over loopback.  The test or benchmark writes
frames into ``tap_a``/``tap_b`` and calls the forwarders' drain methods itself.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from meshrouter.crypto import Suite
from meshrouter.dataplane import DataSession
from meshrouter.forwarder import Forwarder
from meshrouter.mactable import MacTable
from meshrouter.topology import Routes
from meshrouter.udp import UdpSocket

VNET = bytes(10)


class _Peer:
    """The parts of router.Peer the forwarder uses."""

    def __init__(self, name: bytes, session: DataSession, addr: tuple[str, int]) -> None:
        self.name = name
        self.session = session
        self.udp_addr = addr
        self.label = name.hex()
        self.next_heartbeat = 1e18
        self.next_probe = 1e18


@contextmanager
def pair(
    offload: bool = True,
) -> Iterator[tuple[Forwarder, Forwarder, socket.socket, socket.socket]]:
    a_name, b_name = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    k1, k2 = b"1" * 32, b"2" * 32
    sa = DataSession(suite=Suite.AEGIS128L, send_key=k1, recv_key=k2, local_index=5, peer_index=9)
    sb = DataSession(suite=Suite.AEGIS128L, send_key=k2, recv_key=k1, local_index=9, peer_index=5)
    sa.datagram_size = sb.datagram_size = 1472
    ua = UdpSocket("127.0.0.1", 0, gso=offload, gro=offload)
    ub = UdpSocket("127.0.0.1", 0, gso=offload, gro=offload)
    ta_app, ta = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tb_app, tb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ta, tb, ta_app, tb_app):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    pa = _Peer(b_name, sa, ub.sock.getsockname())
    pb = _Peer(a_name, sb, ua.sock.getsockname())
    graph = {a_name: {b_name}, b_name: {a_name}}

    def forwarder(me: bytes, tap: socket.socket, udp: UdpSocket, peer: _Peer) -> Forwarder:
        assert peer.session is not None
        return Forwarder(
            me=me,
            tap_fd=tap.fileno(),
            udp=udp,
            peers={peer.name: peer},  # type: ignore[dict-item]
            by_index={peer.session.local_index: peer},  # type: ignore[dict-item]
            topology=SimpleNamespace(routes=Routes({peer.name: peer.name}, graph, {}, me)),
            macs=MacTable(),
            now=time.monotonic,
        )

    fa = forwarder(a_name, ta, ua, pa)
    fb = forwarder(b_name, tb, ub, pb)
    fa.macs.learn(b"\x0a" * 6, b_name, time.monotonic())
    try:
        yield fa, fb, ta_app, tb_app
    finally:
        for s in (ta, tb, ta_app, tb_app):
            s.close()
        ua.close()
        ub.close()
        fa.close()
        fb.close()


def frame(size: int) -> bytes:
    eth = b"\x0a" * 6 + b"\x0b" * 6 + b"\x08\x00"
    return VNET + eth + bytes(size - len(eth))
