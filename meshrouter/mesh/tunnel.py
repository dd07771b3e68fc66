"""Connections through a relay, for a direct UDP path between two hosts that
cannot open TCP to each other (both behind NATs) (sans-IO).

Two routers behind two different NATs that map one port to every
destination (most home routers, cloud NAT gateways) each know how the mesh
sees their UDP port (``nat.Reflection``) and put it in their gossip record
as a *candidate*.  The one with the smaller name then opens a control
connection to the other through a peer both have a TCP connection to: the
control stream, already encrypted and authenticated end to end by the
handshake, rides TUNNEL messages (``dst``, ``origin``, flags, tunnel id,
the stream's bytes) one hop through the relay.  The relay passes them on and
can read none of them.  When the handshake is done, each side sends its UDP
heartbeats to the other's candidate at once: each NAT sees its host's
datagram leave before the other's arrives and lets the answer in (a hole
punched).  When UDP flows both ways, the connection is ESTABLISHED and
carries the data directly; until then the data is relayed as before.

A tunnel whose UDP has not come up within ``PUNCH_TIMEOUT`` stays open:
its session is the pair's own, and the data between them, relayed, is
sealed with it inside the relay's hop (``dataplane.send._send_through``),
so the relay passes on what it cannot read.  Its heartbeats keep going to
the candidate the peer's record names now (a NAT rebooted and mapping to
another port is punched through once both records say so).  Two hosts of
which one is behind a NAT that maps per destination have no candidate to
punch to, and get such a tunnel too, for its keys alone.  A tunnel whose
relay goes away is closed with it and opened again through another; a
connection of the pair's own replaces it (``Mesh._duplicate_loser``).
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.base.inputs import split_address
from meshrouter.base.names import format_name
from meshrouter.contract.status import ConnState
from meshrouter.mesh.nat import host_of
from meshrouter.mesh.topology import RELAY_NEVER
from meshrouter.proto.control import MessageType, State

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

log = logging.getLogger("meshrouter")

HEADER = struct.Struct("!6s6sBI")  # dst, origin, flags, tunnel id
FROM_INITIATOR = 1
KNOWN_FLAGS = FROM_INITIATOR
MAX_CHUNK = 16384  # stream bytes per TUNNEL message
MAX_PER_PEER = 2  # tunnels from one peer at once (a replacement beside the old one)
HOLD = 2.0  # both candidates known this long before a first try
# Both behind NATs, no candidate to punch to: this long before a tunnel for
# the keys alone (any connection of their own, over a LAN, comes first).
HOLD_SEALED = 10.0
PUNCH_TIMEOUT = 15.0  # UDP not up both ways by then: relayed, sealed end to end
BACKOFF_FIRST = 20.0
BACKOFF_MAX = 600.0
RELAY_GONE_WAIT = 1.0  # a tunnel whose relay went away: again through another
NO_PATH = "no direct UDP path through the NATs: relayed, sealed end to end"


def encode_tunnel(dst: bytes, origin: bytes, flags: int, tid: int, data: bytes) -> bytes:
    return HEADER.pack(dst, origin, flags, tid) + data


def decode_tunnel_untrusted(payload: bytes) -> tuple[bytes, bytes, int, int, bytes]:
    """(dst, origin, flags, tunnel id, bytes).  Raises only BadPacket."""
    if len(payload) < HEADER.size:
        raise BadPacket("TUNNEL message too short")
    dst, origin, flags, tid = HEADER.unpack_from(payload)
    if flags & ~KNOWN_FLAGS:
        raise BadPacket(f"TUNNEL message with unknown flags {flags:#x}")
    if not tid:
        raise BadPacket("TUNNEL message with tunnel id 0")
    return dst, origin, flags, tid, payload[HEADER.size :]


def _candidate_addr(address: str) -> tuple[str, int] | None:
    try:
        host, port = split_address(address, 0)
    except ValueError:
        return None
    return (host, port) if port else None


class Tunnels:
    def __init__(self, mesh: Mesh) -> None:
        self.m = mesh
        self.accepted: dict[tuple[bytes, int], int] = {}  # (origin, its id) -> our index
        self.backoff: dict[bytes, float] = {}  # peer -> the wait after its next failure
        self.next_try: dict[bytes, float] = {}  # peer -> not before
        self.both_known: dict[bytes, float] = {}  # peer -> since when both candidates
        self.now = 0.0
        self.told: tuple[str, bool] = ("", False)  # the candidate and NAT our record carry

    # -- status ---------------------------------------------------------------------

    def states(self, now: float) -> dict[str, str]:
        """Each peer behind another NAT: punched, punching, or relayed."""
        out: dict[str, str] = {}
        for conn in self.conns():
            if conn.name or conn.tunnel_to:
                who = self.m.nickname_of(conn.name or conn.tunnel_to)
                if conn.state is ConnState.ESTABLISHED:
                    out[who] = "punched"
                elif conn.link is None:
                    out[who] = "punching" if conn.punch_to else "relayed: handshake under way"
                elif conn.punch_to is None:
                    out[who] = "relayed, sealed end to end: no address to punch to"
                elif conn.punch_failed:
                    out[who] = "relayed, sealed end to end: no direct path yet, punching on"
                else:
                    out[who] = "punching"
        for name, at in self.next_try.items():
            who = self.m.nickname_of(name)
            if who in out or name in self.m.peers or name not in self.m.gossip.records:
                continue
            if at > now:
                out[who] = f"relayed: no tunnel, next try in {at - now:.0f}s"
        return dict(sorted(out.items()))

    def conns(self) -> list[Conn]:
        return [c for c in self.m.conns.values() if c.via is not None]

    # -- periodic work ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.now = now
        ours, nat = self.m.reflection.candidate(), self.m.reflection.behind_nat()
        told = (ours, nat)
        if told != self.told:
            self.told = told
            self.m.announce.own_record_changed()
        for conn in self.conns():
            if conn.control.state is not State.CLOSED and now >= conn.control.get_timer():
                conn.control.handle_timer(now)
                self.m.process(conn, now)
            self._check_path(conn, now)
        self._open_due(ours, nat, now)

    def _check_path(self, conn: Conn, now: float) -> None:
        if conn.control.state is State.CLOSED:
            return
        if conn.state is ConnState.ESTABLISHED:
            conn.punch_since, conn.punch_failed = now, False
            if conn.name:
                self.backoff.pop(conn.name, None)  # it worked: a later failure starts afresh
            return
        dest = self._candidate_of(conn.tunnel_to)
        if dest is not None and dest != conn.punch_to:  # its NAT maps it elsewhere now
            conn.punch_to, conn.punch_since, conn.punch_failed = dest, now, False
            if conn.link is not None:
                conn.link.punch_to = dest  # the forwarder sends there while it hears nothing
            self.m.counters["punches_tried"] += 1
            return
        late = now - conn.punch_since > PUNCH_TIMEOUT
        if conn.punch_to is not None and not conn.punch_failed and late:
            conn.punch_failed = True
            self.m.counters["punches_failed"] += 1
            log.info("%s: %s", conn.label, NO_PATH)

    def _candidate_of(self, name: bytes) -> tuple[str, int] | None:
        theirs = sorted(self.m.gossip.candidates_of(name))
        return _candidate_addr(theirs[0]) if theirs else None

    def _open_due(self, ours: str, nat: bool, now: float) -> None:
        """Open a tunnel to each peer behind another NAT (by its record) that
        has a larger name: to punch to its candidate when both have one, else
        for its keys alone (``HOLD_SEALED`` later).  ``ours``: our candidate;
        ``nat``: whether we are behind a NAT."""
        if self.m.public or not (ours or nat):
            self.both_known.clear()  # peers can dial us: they do
            return
        busy = {c.name or c.tunnel_to for c in self.m.conns.values()}
        records = self.m.gossip.records
        for name, rec in sorted(records.items()):
            if name <= self.m.me or name in busy or name in self.m.maker.evicted:
                self.both_known.pop(name, None)
                continue
            theirs = sorted(self.m.gossip.candidates_of(name))
            same_nat = bool(theirs and ours) and host_of(theirs[0]) == host_of(ours)
            if same_nat or not rec.behind_nat():
                self.both_known.pop(name, None)  # behind ours, or dialable: dialled
                continue
            since = self.both_known.setdefault(name, now)
            hold = HOLD if theirs and ours else HOLD_SEALED
            if now - since < hold or now < self.next_try.get(name, 0.0):
                continue
            relay = self._relay_for(name)
            dest = _candidate_addr(theirs[0]) if theirs else None
            if relay is None or len(self.m.conns) >= self.m.conn_limit:
                continue
            self._open(name, relay, dest, now)

    def _relay_for(self, name: bytes) -> Conn | None:
        """A neighbour with a TCP connection to ``name`` (by its record)."""
        records = self.m.gossip.records
        for relay in sorted(self.m.peers):
            conn = self.m.peers[relay]
            rec = records.get(relay)
            if conn.via is not None or rec is None or rec.relay_role() == RELAY_NEVER:
                continue
            if any(c.peer == name and c.address for c in rec.connections):
                return conn
        return None

    def _open(self, name: bytes, relay: Conn, dest: tuple[str, int] | None, now: float) -> None:
        index = self.m.open_connection(
            initiator=True,
            remote=dest or (host_of(relay.where), 0),
            now=now,
            ephemeral=self._ephemeral(),
        )
        assert index is not None  # ours: never refused
        conn = self.m.conns[index]
        conn.via, conn.tunnel_to, conn.tunnel_id = relay.name, name, index
        conn.punch_to, conn.punch_since = dest, now
        if dest is not None:
            self.m.counters["punches_tried"] += 1
        self.m.counters["tunnels_opened"] += 1
        log.info(
            "both behind NATs: %s dialled through %s, %s",
            format_name(name),
            relay.label,
            f"to punch a UDP path to {conn.where}"
            if dest
            else "for keys of our own (no address to punch to): relayed, sealed end to end",
        )

    def _ephemeral(self) -> bytes:
        return self.m.rng.getrandbits(256).to_bytes(32, "big")

    # -- bytes --------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what each tunnelled connection has, through its relay; end
        those that closed (their CLOSE goes first)."""
        for conn in self.conns():
            relay = self.m.peers.get(conn.via or b"")
            if relay is None and conn.control.state is not State.CLOSED:
                self.m.close_connection(conn, "its relay went away", self.now)
            data = conn.control.data_to_send()
            flags = FROM_INITIATOR if conn.initiator else 0
            dst = conn.tunnel_to
            for i in range(0, len(data), MAX_CHUNK):
                chunk = encode_tunnel(
                    dst, self.m.me, flags, conn.tunnel_id, data[i : i + MAX_CHUNK]
                )
                if relay is None or not self.m.send_message(relay, MessageType.TUNNEL, chunk):
                    self.m.counters["tunnel_unsent"] += 1
                    break
            if conn.control.state is State.CLOSED:
                if conn.initiator:
                    self._ended(conn.tunnel_to, soon=relay is None)
                else:
                    self.accepted.pop((conn.tunnel_to, conn.tunnel_id), None)
                self.m.connection_lost(conn.index, self.now)

    def _ended(self, name: bytes, *, soon: bool = False) -> None:
        """Our tunnel to ``name`` ended: the next try waits, longer each time
        (from the first wait again once one carried UDP); ``soon`` after its
        relay went away (another carries the next one)."""
        if soon:
            self.next_try[name] = self.now + RELAY_GONE_WAIT
            return
        wait = self.backoff.get(name, BACKOFF_FIRST)
        self.backoff[name] = min(wait * 2, BACKOFF_MAX)
        self.next_try[name] = self.now + wait * self.m.rng.uniform(0.8, 1.2)

    def on_message(self, conn: Conn, payload: bytes, now: float) -> None:
        self.now = now
        try:
            dst, origin, flags, tid, data = decode_tunnel_untrusted(payload)
        except BadPacket:
            self.m.counters["control_messages_bad"] += 1
            return
        if dst != self.m.me:
            self._pass_on(conn, dst, origin, payload)
            return
        if flags & FROM_INITIATOR:
            index = self.accepted.get((origin, tid))
            if index is None:
                index = self._accept(conn, origin, tid, now)
        else:
            index = tid if tid in self.m.conns and self.m.conns[tid].tunnel_to == origin else None
        tunnel = self.m.conns.get(index) if index is not None else None
        if tunnel is None or tunnel.via != conn.name:
            self.m.counters["tunnel_unknown"] += 1
            return
        if tunnel.control.state is not State.CLOSED:
            tunnel.control.receive_data(data, now)
            self.m.process(tunnel, now)

    def _pass_on(self, conn: Conn, dst: bytes, origin: bytes, payload: bytes) -> None:
        """One hop only, from the origin itself, to a TCP neighbour."""
        onward = self.m.peers.get(dst)
        never = self.m.relay_role == RELAY_NEVER  # --relay no: we carry no one's
        if never or origin != conn.name or onward is None or onward.via is not None:
            self.m.counters["tunnel_relay_dropped"] += 1
            return
        if self.m.send_message(onward, MessageType.TUNNEL, payload):
            self.m.counters["tunnel_bytes_relayed"] += len(payload)
        else:
            self.m.counters["tunnel_relay_dropped"] += 1

    def _accept(self, relay: Conn, origin: bytes, tid: int, now: float) -> int | None:
        if sum(1 for c in self.conns() if c.tunnel_to == origin) >= MAX_PER_PEER:
            self.m.counters["tunnels_refused"] += 1  # a peer that opens tunnel after tunnel
            return None
        dest = self._candidate_of(origin)
        index = self.m.open_connection(
            initiator=False,
            remote=dest or (host_of(relay.where), 0),
            now=now,
            ephemeral=self._ephemeral(),
        )
        if index is None:  # at the connection limit: counted there
            return None
        conn = self.m.conns[index]
        conn.via, conn.tunnel_to, conn.tunnel_id = relay.name, origin, tid
        conn.punch_to, conn.punch_since = dest, now
        self.accepted[(origin, tid)] = index
        return index
