"""What the mesh core says of itself to its neighbours (sans-IO): topology
gossip (``topology.Gossip`` holds the view, ``spread.Spreader`` decides what
goes to whom and when: our record when our connections change, what a merge
changed to those who lack it, digests for anti-entropy) and CLOCK (our wall
clock and version every ``CLOCK_INTERVAL``, so that peers see the skew
between them).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.contract.status import ConnState
from meshrouter.mesh.spread import Spreader
from meshrouter.mesh.topology import RELAY_MAY, ConnInfo
from meshrouter.proto.control import MessageType

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

CLOCK_INTERVAL = 30.0  # seconds between CLOCK messages
DIGEST_VERSION = 2  # the protocol version from which peers gossip by digests
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
        self.spread = Spreader(mesh.gossip, now)
        self.next_clock = now + CLOCK_INTERVAL
        self.wall_offset: float | None = None  # wall clock minus ``now``, from tick()

    def neighbour_up(self, conn: Conn) -> None:
        """A new peer: it gets a digest (v2) or our whole view (v1) at once."""
        res = conn.result
        assert res is not None
        self.spread.neighbour_up(conn.name, digests=res.keys.version >= DIGEST_VERSION)

    def neighbour_down(self, name: bytes) -> None:
        self.spread.neighbour_down(name)

    def on_gossip(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            changed = self.spread.receive_untrusted(conn.name, payload)
        except BadPacket as exc:
            self.m.counters["gossip_errors"] += 1
            self.m.close_connection(conn, f"bad gossip: {exc}", now, cause="error")
            return
        if changed:
            self.topology_changed()

    def on_clock(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            wall, version = parse_clock_untrusted(payload)
        except BadPacket:
            self.m.counters["control_messages_bad"] += 1
            return
        conn.peer_version = version
        if self.wall_offset is not None:
            conn.clock_skew = wall - (now + self.wall_offset)

    def flush(self, now: float) -> None:
        """Send the gossip that is due (coalesced per neighbour: ``spread``)."""
        for name, payload in self.spread.due(now):
            conn = self.m.peers.get(name)
            if conn is not None and self.m.send_message(conn, MessageType.GOSSIP, payload):
                self.m.counters["gossip_bytes_sent"] += len(payload)
                self.m.counters["gossip_messages_sent"] += 1

    def send_clock(self, conn: Conn, now: float) -> None:
        if self.wall_offset is not None:
            self.m.send_message(
                conn,
                MessageType.CLOCK,
                CLOCK.pack(now + self.wall_offset) + self.m.version.encode()[:64],
            )

    def own_record_changed(self) -> None:
        conns = [
            ConnInfo(
                c.name,
                # Through a relay: no address others could dial.
                c.listen_addr if c.via is None else "",
                c.state is ConnState.ESTABLISHED,
                c.initiator,
            )
            for c in self.m.peers.values()
        ]
        # Our own addresses, as entries to ourselves (never established, so
        # no route): every peer, of this release or an older one, dials what
        # the records say of a peer, so a dual-stack host known by one family
        # is reached by the other too.
        conns += [ConnInfo(self.m.me, a, False, False) for a in self.m.advertised]
        # Where a NAT forwards our port to us (--nat-public): the same kind of
        # entry, so every peer dials it as it dials a host with no NAT.
        conns += [
            ConnInfo(self.m.me, a, False, False)
            for a in self.m.public
            if a not in self.m.advertised
        ]
        # Our UDP address as the mesh sees it behind a NAT, a candidate to punch
        # to: an entry to ourselves marked outbound, which no one dials (a
        # release before 0.2 does, and fails: the NAT lets nothing in).
        candidate = self.m.reflection.candidate()
        if candidate:
            conns.append(ConnInfo(self.m.me, candidate, False, True))
        # Our relay role (--relay), when not the default: an entry to ourselves
        # with no address, which no release dials.
        # And whether we are behind a NAT (the flag 16 there): peers behind
        # NATs too seal for us alone through their relays (``tunnel``).
        nat = self.m.reflection.behind_nat() and not self.m.public
        if self.m.relay_role != RELAY_MAY or nat:
            conns.append(ConnInfo(self.m.me, "", False, False, self.m.relay_role, nat))
        if self.m.gossip.set_connections(conns) is not None:
            self.topology_changed()
            self.spread.own_changed()

    def topology_changed(self) -> None:
        """Publish fresh routes for the forwarder (an object replaced whole)."""
        self.m.links.set_routes(self.m.gossip.routes())

    def tick(self, now: float, wall: float | None) -> None:
        if wall is not None:
            self.wall_offset = wall - now
        if now >= self.next_clock:
            self.next_clock = now + CLOCK_INTERVAL
            for conn in list(self.m.peers.values()):
                self.send_clock(conn, now)
        self.flush(now)
