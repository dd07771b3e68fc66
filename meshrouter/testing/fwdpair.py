"""Two real Forwarders wired back to back without namespaces, for tests and benchmarks.

Each "TAP" is a SOCK_SEQPACKET socketpair (frame boundaries kept, like a TAP
device) and the UDP sockets talk over loopback.  The test or benchmark writes
frames into the app ends and calls ``drain_tap``/``drain_udp`` itself.  The
links are published in a ``LinkTable`` exactly as the mesh core does.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from meshrouter.dataplane.forwarder import Forwarder
from meshrouter.dataplane.link import Link, LinkTable
from meshrouter.dataplane.routes import Routes
from meshrouter.dataplane.session import DataSession
from meshrouter.dataplane.sessionstate import Mode
from meshrouter.dataplane.udp import UdpSocket
from meshrouter.testing.sessions import session_pair

VNET = bytes(10)
A_NAME = b"\x02\x00\x00\x00\x00\x01"
B_NAME = b"\x02\x00\x00\x00\x00\x02"
DST_MAC = b"\x0a" * 6  # lives behind B (A has learnt it)
SRC_MAC = b"\x0b" * 6


def probed_pair(*, pure: bool = False) -> tuple[DataSession, DataSession]:
    """A session pair whose path MTU is already known (1472-byte datagrams)."""
    sa, sb = session_pair(pure=pure)
    sa.datagram_size = sb.datagram_size = 1472
    return sa, sb


@dataclass
class Side:
    """One router's data plane: its forwarder, its link table and its TAP's app end."""

    name: bytes
    fwd: Forwarder
    table: LinkTable
    tap: socket.socket  # write frames here to send them; read what was delivered

    @property
    def link(self) -> Link:
        """The link towards the other side."""
        return next(iter(self.table.by_name.values()))

    def replace_link(self, session: DataSession) -> Link:
        """Publish a new link to the same peer (what a reconnect does)."""
        old = self.link
        assert old.udp_addr is not None
        new = Link(
            index=session.local_index,
            peer=old.peer,
            label=old.label,
            session=session,
            udp_addr=old.udp_addr,
        )
        self.table.publish(new)
        return new


@contextmanager
def pair(
    offload: bool = True,
    dataplane: tuple[Mode, Mode] = ("python", "python"),
    *,
    pure: bool = False,
    join: bool = True,
    bind: str = "127.0.0.1",
    reach: str | None = None,
) -> Iterator[tuple[Side, Side]]:
    """Two sides; each forwarder runs the loop its ``dataplane`` names (drive a
    C loop with ``Forwarder.pump``; ``drain_*`` always take the Python paths).
    ``pure``: Python loops with sessions in Python, as without the extension;
    ``join``: receivers join TCP segments (a TAP with offloads).  ``bind``:
    the UDP sockets' address ("::1" for IPv6, "::" for dual-stack); ``reach``:
    the address each side sends to (default: ``bind``)."""
    sa, sb = probed_pair(pure=pure)
    ua = UdpSocket(bind, 0, gso=offload, gro=offload)
    ub = UdpSocket(bind, 0, gso=offload, gro=offload)
    ta_app, ta = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tb_app, tb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ta, tb, ta_app, tb_app):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    graph = {A_NAME: {B_NAME}, B_NAME: {A_NAME}}

    def side(
        me: bytes,
        other: bytes,
        tap: socket.socket,
        app: socket.socket,
        udp: UdpSocket,
        session: DataSession,
        other_udp: UdpSocket,
        mode: Mode,
    ) -> Side:
        table = LinkTable(Routes({other: other}, graph, {}, me))
        addr = other_udp.sock.getsockname()
        addr = (reach or addr[0], addr[1])
        table.publish(
            Link(
                index=session.local_index,
                peer=other,
                label=other.hex(),
                session=session,
                udp_addr=(addr[0], addr[1]),
            )
        )
        fwd = Forwarder(
            me=me,
            tap_fd=tap.fileno(),
            udp=udp,
            links=table,
            now=time.monotonic,
            dataplane=mode,
            join=join,
        )
        for link in table.by_name.values():  # no heartbeats: the test drives the clock
            link.next_heartbeat = link.next_probe = 1e18
        return Side(me, fwd, table, app)

    a = side(A_NAME, B_NAME, ta, ta_app, ua, sa, ub, dataplane[0])
    b = side(B_NAME, A_NAME, tb, tb_app, ub, sb, ua, dataplane[1])
    a.fwd.macs.learn(DST_MAC, B_NAME, time.monotonic())
    try:
        yield a, b
    finally:
        for s in (ta, tb, ta_app, tb_app):
            s.close()
        ua.close()
        ub.close()
        a.fwd.close()
        b.fwd.close()


def frame(size: int) -> bytes:
    eth = DST_MAC + SRC_MAC + b"\x08\x00"
    return VNET + eth + bytes(size - len(eth))


def cross(a: Side, b: Side, frames: list[bytes]) -> list[bytes]:
    """Write ``frames`` into a's TAP, let both forwarders run (whichever loop),
    and return what came out of b's TAP."""
    for f in frames:
        a.tap.send(f)
    a.fwd.pump(time.monotonic())
    b.fwd.pump(time.monotonic())
    out = []
    while True:
        try:
            out.append(b.tap.recv(70_000))
        except BlockingIOError:
            return out
