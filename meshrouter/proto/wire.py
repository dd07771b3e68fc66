"""The data plane's wire format (sans-IO): datagram header, route header, frame packing.

One *message* is sealed with one AEAD call.  A TCP superframe from the TAP
(TSO, up to 64 KiB) is not one message: it is cut into TCP segments, each
sealed as a message of its own that fits one datagram, so that a datagram
lost on the path costs one segment (``tso``, and its C twin in
``_dataplane.c``).  Any other message larger than one datagram may carry on
the path (a large frame without GSO, a relayed message from an older router)
is cut into *segments*, each a datagram of its own, laid out back to back
(``gso.SendBuffer``) so that the kernel sends them with one UDP GSO
``sendmsg``; the receiver reassembles them.  Both kinds are the format of
0.1.0: a one-datagram message is what every version opens.  Every datagram
starts with::

    type(1) | receiver index(4) | counter(8) | segment(1) | segments(1)

The first 13 bytes are the AEAD's associated data; the segment fields only
steer reassembly, and anything wrong in them makes the message fail to
authenticate.  The receiver index was chosen by the receiving router in its
HELLO, so a datagram maps to its link in O(1) whatever its source address.

DATA plaintext is ``origin(6) || destination(6) || hops left(1)``, then
``len(4) || virtio_net_hdr(10) || ethernet frame`` repeated: small frames share
a message, a large frame goes alone.  The virtio header is carried
unchanged from the sender's TAP to the receiver's, so neither side ever
segments or checksums in Python.  Origin and destination are peer names
(destination all-ones for a broadcast); a router that is neither relays the
message towards the destination, re-sealed for the next hop.

HEARTBEAT plaintext is described in ``session`` (liveness) and ``pmtu``.

Every ``*_untrusted`` function here raises nothing but ``BadPacket``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum

from meshrouter.base.errors import BadPacket

HEADER = struct.Struct("!BIQBB")
AD_SIZE = 13  # type, index, counter: the associated data
FRAME_LEN = struct.Struct("!I")
ROUTE = struct.Struct("!6s6sB")  # origin, destination, hops left
ROUTE_AND_LEN = struct.Struct("!6s6sBI")  # ... and the first frame's length
BROADCAST = b"\xff" * 6
MAX_HOPS = 16
MAX_SEGMENTS = 64  # UDP GSO's limit per sendmsg is 64 segments too


class PacketType(IntEnum):
    DATA = 1
    HEARTBEAT = 2


def parse_header_untrusted(
    packet: bytes | bytearray | memoryview, off: int = 0, end: int = -1
) -> tuple[int, int, int, int, int]:
    """Return ``(type, receiver_index, counter, segment, segments)`` of the
    datagram at ``packet[off:end]`` (``end`` -1: the end).  Raises only BadPacket."""
    if (len(packet) if end < 0 else end) - off < HEADER.size:
        raise BadPacket("datagram shorter than the header", "short_datagram")
    ptype, index, counter, seg, nseg = HEADER.unpack_from(packet, off)
    if ptype != PacketType.DATA and ptype != PacketType.HEARTBEAT:
        raise BadPacket(f"unknown datagram type {ptype}", "unknown_type")
    if not seg < nseg <= MAX_SEGMENTS:
        raise BadPacket("bad segment numbers", "bad_segments")
    return ptype, index, counter, seg, nseg


def parse_route_header_untrusted(data: bytes | memoryview) -> tuple[bytes, bytes, int]:
    """``(origin, destination, hops_left)`` of anything relayed with a route
    header (DATA, relayed IPAM messages).  Raises only BadPacket."""
    if len(data) < ROUTE.size:
        raise BadPacket("shorter than a route header", "short_datagram")
    origin, dst, hops = ROUTE.unpack_from(data)
    return origin, dst, hops


def parse_route_untrusted(plain: bytes | memoryview) -> tuple[bytes, bytes, int, int]:
    """``(origin, destination, hops_left, first_frame_length)`` of a DATA
    plaintext (the frame length is not checked here).  Raises only BadPacket."""
    if len(plain) < ROUTE_AND_LEN.size:
        raise BadPacket("DATA shorter than its route header", "short_datagram")
    origin, dst, hops, size = ROUTE_AND_LEN.unpack_from(plain)
    return origin, dst, hops, size


def iter_frames_untrusted(plain: bytes | memoryview, start: int = 0) -> Iterator[memoryview]:
    """Yield each ``virtio_net_hdr || frame`` of a DATA plaintext from ``start``.

    Raises only BadPacket.
    """
    view = memoryview(plain)
    pos, end = start, len(plain)
    while pos < end:
        if end - pos < FRAME_LEN.size:
            raise BadPacket("truncated frame length", "truncated_frame")
        (size,) = FRAME_LEN.unpack_from(plain, pos)
        pos += FRAME_LEN.size
        if size == 0 or pos + size > end:
            raise BadPacket("truncated frame", "truncated_frame")
        yield view[pos : pos + size]
        pos += size


class FramePacker:
    """Packs frames for one destination into message plaintexts of bounded size.

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

    def fits_empty(self, frame_len: int) -> bool:
        """Whether the frame would fit a pack of its own."""
        return len(self._prefix) + FRAME_LEN.size + frame_len <= self.limit

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
