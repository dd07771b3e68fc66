"""What the mesh core says of itself to its neighbours (sans-IO): topology
gossip (``topology.Gossip``: our record when our connections change, what a
merge changed to the others, everything every ``FULL_GOSSIP_INTERVAL``) and
CLOCK (our wall clock and version, so that peers see the skew between them).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.contract.status import ConnState
from meshrouter.mesh.topology import ConnInfo
from meshrouter.proto.control import MessageType

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

FULL_GOSSIP_INTERVAL = 30.0
CLOCK = struct.Struct("!d")


def parse_clock_untrusted(payload: bytes) -> tuple[float, str]:
    """A CLOCK message: (wall clock, version).  Raises only BadPacket."""
    if len(payload) < CLOCK.size or len(payload) > CLOCK.size + 64:
        raise BadPacket("CLOCK message of the wrong length")
    (wall,) = CLOCK.unpack_from(payload)
    if not math.isfinite(wall):
        raise BadPacket("CLOCK is not a finite time")
    return wall, payload[CLOCK.size :].decode("utf-8", "replace")


class Announcer:
    def __init__(self, mesh: Mesh, now: float) -> None:
        self.m = mesh
        self.next_full = now + FULL_GOSSIP_INTERVAL
        self.wall_offset: float | None = None  # wall clock minus ``now``, from tick()

    def on_gossip(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            fwd = self.m.gossip.receive_untrusted(payload)
        except BadPacket as exc:
            self.m.counters["gossip_errors"] += 1
            self.m.close_connection(conn, f"bad gossip: {exc}", now, cause="error")
            return
        if fwd is not None:
            self.topology_changed()
            self.gossip_to_all(fwd, but=conn)

    def on_clock(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            wall, version = parse_clock_untrusted(payload)
        except BadPacket:
            self.m.counters["control_messages_bad"] += 1
            return
        conn.peer_version = version
        if self.wall_offset is not None:
            conn.clock_skew = wall - (now + self.wall_offset)

    def send_gossip(self, conn: Conn, payload: bytes) -> None:
        if self.m.send_message(conn, MessageType.GOSSIP, payload):
            self.m.counters["gossip_bytes_sent"] += len(payload)

    def gossip_to_all(self, payload: bytes, but: Conn | None = None) -> None:
        for conn in list(self.m.peers.values()):
            if conn is not but:
                self.send_gossip(conn, payload)

    def send_clock(self, conn: Conn, now: float) -> None:
        if self.wall_offset is not None:
            self.m.send_message(
                conn,
                MessageType.CLOCK,
                CLOCK.pack(now + self.wall_offset) + self.m.version.encode()[:64],
            )

    def own_record_changed(self) -> None:
        conns = [
            ConnInfo(c.name, c.listen_addr, c.state is ConnState.ESTABLISHED, c.initiator)
            for c in self.m.peers.values()
        ]
        # Our own addresses, as entries to ourselves (never established, so
        # no route): every peer, of this release or an older one, dials what
        # the records say of a peer, so a dual-stack host known by one family
        # is reached by the other too.
        conns += [ConnInfo(self.m.me, a, False, False) for a in self.m.advertised]
        update = self.m.gossip.set_connections(conns)
        if update is not None:
            self.topology_changed()
            self.gossip_to_all(update)

    def topology_changed(self) -> None:
        """Publish fresh routes for the forwarder (an object replaced whole)."""
        self.m.links.set_routes(self.m.gossip.routes())

    def tick(self, now: float, wall: float | None) -> None:
        if wall is not None:
            self.wall_offset = wall - now
        if now >= self.next_full:
            self.next_full = now + FULL_GOSSIP_INTERVAL
            self.gossip_to_all(self.m.gossip.full())
            for conn in list(self.m.peers.values()):
                self.send_clock(conn, now)
