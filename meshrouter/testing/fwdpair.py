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
from meshrouter.proto.crypto import Suite
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


def tap_pair() -> tuple[socket.socket, socket.socket]:
    """A "TAP": (the app's end, the forwarder's end), non-blocking."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in ends:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return ends


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
    ta_app, ta = tap_pair()
    tb_app, tb = tap_pair()
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


def delivered(side: Side) -> list[bytes]:
    """What came out of ``side``'s TAP since the last look."""
    out = []
    while True:
        try:
            out.append(side.tap.recv(70_000))
        except BlockingIOError:
            return out


def cross(a: Side, b: Side, frames: list[bytes]) -> list[bytes]:
    """Write ``frames`` into a's TAP, let both forwarders run (whichever loop),
    and return what came out of b's TAP."""
    for f in frames:
        a.tap.send(f)
    a.fwd.pump(time.monotonic())
    b.fwd.pump(time.monotonic())
    return delivered(b)


C_NAME = b"\x02\x00\x00\x00\x00\x03"


def _keyed(i: int, j: int, pure: bool) -> tuple[DataSession, DataSession]:
    """Sessions between routers i and j (indices i*10+j and j*10+i), keys of
    their own, path MTU known."""

    def one(me: int, other: int) -> DataSession:
        session = DataSession(
            suite=Suite.AEGIS128L,
            send_key=bytes([me, other]) * 16,
            recv_key=bytes([other, me]) * 16,
            local_index=me * 10 + other,
            peer_index=other * 10 + me,
            pure=pure,
        )
        session.datagram_size = 1472
        return session

    return one(i, j), one(j, i)


@contextmanager
def relayed(
    dataplane: tuple[Mode, Mode, Mode] = ("python", "python", "python"),
    *,
    pure: bool = False,
    e2e: bool = True,
) -> Iterator[tuple[Side, Side, Side]]:
    """A, B, C on loopback with links A-B and B-C, and routes from A to C
    through B.  A and C also hold a session of their own (a connection
    through B, as ``mesh.tunnel`` makes behind NATs) with no UDP address:
    frames between them are sealed for each other inside B's hops (with
    ``e2e`` False, a peer that cannot open them: B re-seals them)."""
    names = (A_NAME, B_NAME, C_NAME)
    graph = {A_NAME: {B_NAME}, B_NAME: {A_NAME, C_NAME}, C_NAME: {B_NAME}}
    udps = [UdpSocket("127.0.0.1", 0) for _ in names]
    taps = [tap_pair() for _ in names]
    tables = []
    for me in names:
        hops = {n: (n if B_NAME in (me, n) else B_NAME) for n in names if n != me}
        tables.append(LinkTable(Routes(hops, graph, {}, me)))

    def link(i: int, j: int, session: DataSession, udp: bool, far: bool) -> None:
        addr = udps[j].sock.getsockname() if udp else None
        tables[i].publish(
            Link(
                index=session.local_index,
                peer=names[j],
                label=names[j].hex(),
                session=session,
                udp_addr=None if addr is None else (addr[0], addr[1]),
                e2e=far,
            )
        )

    for i, j in ((0, 1), (1, 2), (0, 2)):
        si, sj = _keyed(i + 1, j + 1, pure)
        direct = 1 in (i, j)
        link(i, j, si, direct, e2e)
        link(j, i, sj, direct, e2e)
    sides = []
    for k, me in enumerate(names):
        fwd = Forwarder(
            me=me,
            tap_fd=taps[k][1].fileno(),
            udp=udps[k],
            links=tables[k],
            now=time.monotonic,
            dataplane=dataplane[k],
        )
        for ln in tables[k].by_name.values():  # no heartbeats: the test drives the clock
            ln.next_heartbeat = ln.next_probe = 1e18
        sides.append(Side(me, fwd, tables[k], taps[k][0]))
    a, b, c = sides
    a.fwd.macs.learn(DST_MAC, C_NAME, time.monotonic())
    try:
        yield a, b, c
    finally:
        for pair_ in taps:
            for s in pair_:
                s.close()
        for u in udps:
            u.close()
        for side_ in sides:
            side_.fwd.close()


def cross_relayed(a: Side, b: Side, c: Side, frames: list[bytes]) -> list[bytes]:
    """``cross`` from a to c through b."""
    for f in frames:
        a.tap.send(f)
    for side_ in (a, b, c):
        side_.fwd.pump(time.monotonic())
    return delivered(c)
