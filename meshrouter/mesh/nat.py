"""How each peer is seen (sans-IO): the reflexive addresses, as STUN finds them.

Every router tells each neighbour the address it sees that neighbour's
control connection come from (TCP, when the neighbour dialled) and its
datagrams come from (UDP: the source of the last authenticated datagram,
which the data plane follows as WireGuard's roaming does).  A router behind
a NAT learns the public side of its mappings this way; two neighbours that
report one UDP port mapped to different public ports show a NAT that maps
per destination (a "symmetric" NAT, where hole punching cannot work).

Wire format (control message OBSERVED, sealed by the connection)::

    tcp_len(u8) tcp(ascii "host:port" or empty) udp_len(u8) udp(ascii, or empty)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadInput, BadPacket
from meshrouter.base.inputs import format_address, split_address
from meshrouter.proto.control import MessageType

if TYPE_CHECKING:
    from meshrouter.mesh.core import Conn, Mesh

MAX_ADDRESS = 64


def encode_observed(tcp: str, udp: str) -> bytes:
    a, b = tcp.encode()[:MAX_ADDRESS], udp.encode()[:MAX_ADDRESS]
    return bytes([len(a)]) + a + bytes([len(b)]) + b


def _address(raw: bytes) -> str:
    if not raw:
        return ""
    try:
        host, port = split_address(raw.decode("ascii"), 0)
    except (UnicodeDecodeError, BadInput) as exc:
        raise BadPacket(f"bad observed address: {exc}") from exc
    if not port:
        raise BadPacket("observed address without a port")
    return format_address(host, port)


def decode_observed_untrusted(payload: bytes) -> tuple[str, str]:
    """(tcp, udp) as the neighbour sees us; "" where it sees none.  Raises only
    BadPacket."""
    if not payload or payload[0] > MAX_ADDRESS:
        raise BadPacket("bad OBSERVED message")
    n = payload[0]
    tcp = payload[1 : 1 + n]
    rest = payload[1 + n :]
    if len(tcp) != n or not rest or rest[0] > MAX_ADDRESS or len(rest) != 1 + rest[0]:
        raise BadPacket("OBSERVED message of the wrong length")
    return _address(tcp), _address(rest[1:])


def host_of(address: str) -> str:
    return split_address(address, 0)[0] if address else ""


class Reflection:
    def __init__(self, mesh: Mesh) -> None:
        self.m = mesh

    def tick(self) -> None:
        """Tell each neighbour how we see it, when that changed."""
        for conn in list(self.m.peers.values()):
            link = conn.link
            tunnel = conn.via is not None  # no TCP of its own: nothing to tell of it
            tcp = "" if conn.initiator or tunnel else format_address(*conn.remote)
            udp = ""
            heard = link is not None and link.session.heard_at > -math.inf
            if link is not None and link.udp_addr is not None and heard:
                udp = format_address(*link.udp_addr)
            told = (tcp, udp) == conn.told_seen
            if not told and self.m.send_message(
                conn, MessageType.OBSERVED, encode_observed(tcp, udp)
            ):
                conn.told_seen = (tcp, udp)

    def on_message(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            conn.seen_as = decode_observed_untrusted(payload)
        except BadPacket:
            self.m.counters["control_messages_bad"] += 1

    def seen_udp(self) -> dict[str, list[str]]:
        """Our UDP address as the neighbours see it -> the neighbours
        (nicknames).  Not a peer we reach through a relay (``tunnel``): it
        sees the address it punched to, which may be one our NAT no longer
        maps (rebooted), and would make us look like a NAT that maps per
        destination just when our new address must be told."""
        out: dict[str, list[str]] = {}
        for conn in self.m.peers.values():
            if conn.via is not None:
                continue
            udp = conn.seen_as[1]
            if udp and conn.result is not None:
                out.setdefault(udp, []).append(conn.result.peer.nickname)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def behind_nat(self) -> bool:
        """Neighbours see us at an address that is none of ours."""
        mine = {host_of(a) for a in self.m.advertised}
        return bool(mine) and any(host_of(a) not in mine for a in self.seen_udp())

    def candidate(self) -> str:
        """Our UDP address as the mesh sees it, when a NAT maps it alike for
        every destination ("" when not behind one, or when it maps per
        destination: then no one can punch to us; ``tunnel``), and none
        with ``--nat-public``: peers dial us there instead."""
        seen = self.seen_udp()
        if self.m.public or len(seen) != 1 or not self.behind_nat():
            return ""
        (addr,) = seen
        return addr

    def symmetric(self) -> bool:
        """Neighbours see one public address of ours with different ports: a
        NAT that maps per destination."""
        ports: dict[str, set[str]] = {}
        for udp in self.seen_udp():
            ports.setdefault(host_of(udp), set()).add(udp)
        return any(len(v) > 1 for v in ports.values())
