"""The mesh core's table of channels (sans-IO): who handles each message type,
draining the channels' outboxes, and relaying a channel's message hop by
hop to a peer with no direct connection (``channel`` says what a channel is).

A relayed message is a route header (origin, destination, hops left) and
the channel's payload, sent as the channel's ``relayed`` type to the next hop
of the data plane's routes; each hop passes it on with one hop less, and the
destination hands the payload to its channel as if the origin had sent it.
A bad relayed message is counted, never held against the relaying peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.base.names import format_name
from meshrouter.mesh.channel import Broadcast, Channel
from meshrouter.mesh.topology import RELAY_NEVER
from meshrouter.proto.wire import MAX_HOPS, ROUTE, parse_route_header_untrusted

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

Handler = Callable[["Conn", bytes, float], None]


class Channels:
    def __init__(self, mesh: Mesh, channels: Sequence[Channel], own: dict[int, Handler]) -> None:
        self.m = mesh
        self.channels = list(channels)
        self.handlers: dict[int, Handler] = dict(own)
        for ch in self.channels:
            self.handlers[ch.mtype] = self.receiver(ch)
            if ch.relayed is not None:
                self.handlers[ch.relayed] = self.relay_receiver(ch)

    def receiver(self, ch: Channel) -> Callable[[Conn, bytes, float], None]:
        def receive(conn: Conn, payload: bytes, now: float) -> None:
            try:
                ch.receive_untrusted(conn.name, payload, now)
            except BadPacket as exc:
                self.m.counters[f"{ch.name}_errors"] += 1
                if ch.close_on_bad:
                    self.m.close_connection(conn, f"bad {ch.what}: {exc}", now, cause="error")
            self.flush()

        return receive

    def relay_receiver(self, ch: Channel) -> Callable[[Conn, bytes, float], None]:
        def receive(conn: Conn, payload: bytes, now: float) -> None:
            self._on_relayed(ch, payload, now)
            self.flush()

        return receive

    def drop(self, ch: Channel) -> None:
        """Stop carrying ``ch`` (its subsystem could not start): its messages
        are then unknown ones."""
        self.channels.remove(ch)
        self.handlers.pop(ch.mtype, None)
        if ch.relayed is not None:
            self.handlers.pop(ch.relayed, None)

    def flush(self) -> None:
        for ch in self.channels:
            for msg in ch.messages_to_send():
                if isinstance(msg, Broadcast):
                    for name, conn in list(self.m.peers.items()):
                        if name != msg.but:
                            self.m.send_message(conn, ch.mtype, msg.payload)
                else:
                    self._send_to(ch, msg.peer, msg.payload)

    def _send_to(self, ch: Channel, name: bytes, payload: bytes) -> None:
        """To peer ``name``: directly, or relayed through the mesh (like a data
        frame) when there is no connection to it and the channel relays."""
        conn = self.m.peers.get(name)
        if conn is not None and self.m.send_message(conn, ch.mtype, payload):
            return
        if ch.relayed is None or not self._relay(
            ch, ROUTE.pack(self.m.me, name, MAX_HOPS) + payload
        ):
            self.m.counters[f"{ch.name}_unsent"] += 1

    def _relay(self, ch: Channel, message: bytes) -> bool:
        """Pass a relayed message (route header first) one hop on."""
        assert ch.relayed is not None
        origin, dst, _hops = ROUTE.unpack_from(message)
        if origin != self.m.me and self.m.relay_role == RELAY_NEVER:
            return False  # --relay no: we pass on no one's
        hop = self.m.links.routes.next_hop.get(dst)
        conn = self.m.peers.get(hop) if hop is not None else None
        return conn is not None and self.m.send_message(conn, ch.relayed, message)

    def _on_relayed(self, ch: Channel, payload: bytes, now: float) -> None:
        try:
            origin, dst, hops = parse_route_header_untrusted(payload)
        except BadPacket:
            self.m.counters[f"{ch.name}_errors"] += 1
            return
        if dst != self.m.me:
            onward = payload[: ROUTE.size - 1] + bytes([max(hops - 1, 0)]) + payload[ROUTE.size :]
            if hops == 0 or origin == self.m.me or not self._relay(ch, onward):
                self.m.counters[f"{ch.name}_relay_dropped"] += 1
            else:
                self.m.counters[f"{ch.name}_relayed"] += 1
            return
        try:
            ch.receive_untrusted(origin, payload[ROUTE.size :], now)
        except BadPacket as exc:
            # The relaying peer is not to blame: count it, keep the connection.
            self.m.counters[f"{ch.name}_errors"] += 1
            who = format_name(origin)
            self.m.complaints.say(
                logging.WARNING,
                who,
                f"bad relayed {ch.name}",
                "bad %s relayed from %s: %s",
                ch.what,
                who,
                exc,
                now=now,
            )
