"""The UDP data plane (sans-IO): datagram format, sessions, frame packing.

Datagram::

    type(1) | receiver index(4) | counter(8) | AEAD(plaintext, ad=first 13 bytes)

The receiver index is chosen by the receiving router in its HELLO, so a
datagram maps to its session in O(1) whatever its source address.  Each
direction has its own key; the counter is the nonce and passes an anti-replay
window before the packet is trusted.

DATA plaintext is ``origin(6) || destination(6) || hops left(1)``, then
``len(2) || ethernet frame`` repeated, so small frames can share a datagram.
Origin and destination are peer names (destination all-ones for a broadcast);
a router that is neither relays the datagram towards the destination,
re-sealed under its own session with the next hop.

HEARTBEAT plaintext is one flags byte: bit 0 means "I have heard your UDP
recently"; a session is *established* only when we hear the peer and the peer
says it hears us, i.e. UDP flows both ways.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from enum import IntEnum

from .constants import UDP_TIMEOUT
from .crypto import Opener, Sealer, Suite
from .errors import BadPacket
from .replay import ReplayWindow

HEADER = struct.Struct("!BIQ")
FRAME_LEN = struct.Struct("!H")
ROUTE = struct.Struct("!6s6sB")  # origin, destination, hops left
BROADCAST = b"\xff" * 6
MAX_HOPS = 16


class PacketType(IntEnum):
    DATA = 1
    HEARTBEAT = 2


HEARD_YOU = 0x01


def parse_header_untrusted(packet: bytes | memoryview) -> tuple[int, int, int]:
    """Return ``(type, receiver_index, counter)``.  Raises only BadPacket."""
    if len(packet) < HEADER.size:
        raise BadPacket("datagram shorter than the header")
    ptype, index, counter = HEADER.unpack_from(packet)
    if ptype != PacketType.DATA and ptype != PacketType.HEARTBEAT:
        raise BadPacket(f"unknown datagram type {ptype}")
    return ptype, index, counter


def parse_route_untrusted(plain: bytes) -> tuple[bytes, bytes, int]:
    """``(origin, destination, hops_left)`` of a DATA plaintext.  Raises only BadPacket."""
    if len(plain) < ROUTE.size:
        raise BadPacket("DATA shorter than its route header")
    origin, dst, hops = ROUTE.unpack_from(plain)
    return origin, dst, hops


def iter_frames_untrusted(plain: bytes, start: int = 0) -> Iterator[memoryview]:
    """Yield each frame of a DATA plaintext from ``start``.  Raises only BadPacket."""
    view = memoryview(plain)
    pos, end = start, len(plain)
    while pos < end:
        if end - pos < FRAME_LEN.size:
            raise BadPacket("truncated frame length")
        (size,) = FRAME_LEN.unpack_from(plain, pos)
        pos += FRAME_LEN.size
        if size == 0 or pos + size > end:
            raise BadPacket("truncated frame")
        yield view[pos : pos + size]
        pos += size


class DataSession:
    """Crypto and liveness state of the data plane towards one peer."""

    __slots__ = (
        "_opener",
        "_peer_heard_us_at",
        "_replay",
        "_sealer",
        "heard_at",
        "local_index",
        "peer_index",
        "rx_bytes",
        "rx_frames",
        "rx_packets",
        "tx_bytes",
        "tx_frames",
        "tx_packets",
        "udp_timeout",
    )

    def __init__(
        self,
        *,
        suite: Suite,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        peer_index: int,
        udp_timeout: float = UDP_TIMEOUT,
    ) -> None:
        self._sealer = Sealer(suite, send_key)
        self._opener = Opener(suite, recv_key)
        self._replay = ReplayWindow()
        self.local_index = local_index
        self.peer_index = peer_index
        self.udp_timeout = udp_timeout
        self.heard_at = -math.inf
        self._peer_heard_us_at = -math.inf
        self.tx_packets = self.rx_packets = 0
        self.tx_frames = self.rx_frames = 0
        self.tx_bytes = self.rx_bytes = 0

    @property
    def tag_bytes(self) -> int:
        return self._sealer.info.tag_bytes

    def seal(self, ptype: PacketType, plaintext: bytes) -> bytes:
        counter = self._sealer.next_counter()
        header = HEADER.pack(ptype, self.peer_index, counter)
        self.tx_packets += 1
        return header + self._sealer.seal(counter, header, plaintext)

    def open_untrusted(self, packet: bytes, counter: int, now: float) -> bytes:
        """Authenticate and decrypt; enforce anti-replay.  Raises only BadPacket."""
        if not self._replay.would_accept(counter):
            raise BadPacket("replayed or too old")
        header = packet[: HEADER.size]
        plain = self._opener.open_untrusted(counter, header, packet[HEADER.size :])
        if not self._replay.accept(counter):  # pragma: no cover - checked above
            raise BadPacket("replayed")
        self.heard_at = now
        self.rx_packets += 1
        return plain

    # -- heartbeats -----------------------------------------------------

    def heartbeat(self, now: float) -> bytes:
        flags = HEARD_YOU if self.hears_peer(now) else 0
        return self.seal(PacketType.HEARTBEAT, bytes([flags]))

    def on_heartbeat(self, plain: bytes, now: float) -> None:
        if plain and plain[0] & HEARD_YOU:
            self._peer_heard_us_at = now

    def hears_peer(self, now: float) -> bool:
        return now - self.heard_at < self.udp_timeout

    def established(self, now: float) -> bool:
        """True when authenticated UDP flows both ways."""
        return self.hears_peer(now) and now - self._peer_heard_us_at < self.udp_timeout


class FramePacker:
    """Packs frames for one destination into datagram plaintexts of bounded size.

    Every plaintext starts with ``prefix`` (the route header).
    """

    __slots__ = ("_buf", "_prefix", "frames", "limit")

    def __init__(self, limit: int, prefix: bytes = b"") -> None:
        self.limit = limit
        self._prefix = prefix
        self._buf = bytearray(prefix)
        self.frames = 0

    def fits(self, frame_len: int) -> bool:
        return len(self._buf) + FRAME_LEN.size + frame_len <= self.limit

    def add(self, frame: bytes | memoryview) -> None:
        self._buf += FRAME_LEN.pack(len(frame))
        self._buf += frame
        self.frames += 1

    def __len__(self) -> int:
        """Bytes of frames held (not counting the prefix)."""
        return len(self._buf) - len(self._prefix)

    def take(self) -> bytes:
        data = bytes(self._buf)
        del self._buf[len(self._prefix) :]
        self.frames = 0
        return data
