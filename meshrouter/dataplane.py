"""The UDP data plane (sans-IO): datagram format, sessions, segmentation, frame packing.

One *message* is sealed with one AEAD call, however large: up to a 64 KiB
TCP superframe that the TAP handed us thanks to its offloads.  A message
larger than what one datagram may carry on the path is cut into *segments*,
each a datagram of its own (so the underlay never fragments); they are laid out
back to back, all of one size but the last, so the shell can hand the lot to
the kernel in one UDP GSO ``sendmsg``.  Every datagram starts with::

    type(1) | receiver index(4) | counter(8) | segment(1) | segments(1)

The first 13 bytes are the AEAD's associated data; the segment fields only
steer reassembly, and anything wrong in them makes the message fail to
authenticate.  The receiver index was chosen by the receiving router in its
HELLO, so a datagram maps to its session in O(1) whatever its source address.
Each direction has its own key and the counter is the nonce; a reassembled
message passes an anti-replay window before it is trusted.

DATA plaintext is ``origin(6) || destination(6) || hops left(1)``, then
``len(4) || virtio_net_hdr(10) || ethernet frame`` repeated: small frames share
a message, a large (GSO) frame goes alone.  The virtio header is carried
unchanged from the sender's TAP to the receiver's, so neither side ever
segments or checksums in Python.  Origin and destination are peer names
(destination all-ones for a broadcast); a router that is neither relays the
message towards the destination, re-sealed for the next hop.

HEARTBEAT plaintext is ``flags(1) || largest probe heard(2)`` and padding.
Bit 0 of flags means "I have heard your UDP recently"; a session is
*established* only when UDP flows both ways.  Bit 1 marks a path-MTU probe,
padded to the datagram size under test; the peer reports the largest probe it
heard, and that becomes the datagram size we use towards it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from enum import IntEnum

import numpy as np

from .constants import REKEY_AFTER_MESSAGES, UDP_TIMEOUT
from .crypto import Opener, Ptr, Sealer, Suite, buffer_ptr, readonly_ptr
from .errors import BadPacket
from .replay import ReplayWindow

HEADER = struct.Struct("!BIQBB")
AD_SIZE = 13  # type, index, counter
FRAME_LEN = struct.Struct("!I")
ROUTE = struct.Struct("!6s6sB")  # origin, destination, hops left
ROUTE_AND_LEN = struct.Struct("!6s6sBI")  # ... and the first frame's length
VNET_HDR_LEN = 10
BROADCAST = b"\xff" * 6
MAX_HOPS = 16
MAX_SEGMENTS = 64  # UDP GSO's limit per sendmsg is 64 segments too
MAX_PARTIAL = 8  # messages being reassembled per session

# Datagram (UDP payload) sizes we probe, largest first: an IPv4 1500 path,
# an IPv6 1500 path, then common tunnels and the IPv6 minimum.
PROBE_SIZES = (1472, 1452, 1400, 1380, 1280, 1232)
SAFE_DATAGRAM = 1232  # used until a probe is confirmed
PROBE_MEMORY = 10.0  # seconds a heard probe size is reported back


_SEGMENT_NUMBERS = np.arange(MAX_SEGMENTS, dtype=np.uint8)
MAX_DATAGRAM = PROBE_SIZES[0]
SEND_BUFFER = MAX_SEGMENTS * MAX_DATAGRAM  # the most one message can become on the wire


class SendBuffer:
    """Reused memory for sealing: the datagrams (``data``) and, for a message
    that needs several, its ciphertext before it is cut up (``ct``).  Fixed
    size, with their C pointers and numpy views made once."""

    __slots__ = ("_grids", "arr", "ct", "ct_arr", "ct_ptr", "data", "ptr", "view")

    def __init__(self, capacity: int = SEND_BUFFER) -> None:
        self.data = bytearray(capacity)
        self.view = memoryview(self.data)
        self.ptr = buffer_ptr(self.data)
        self.arr = np.frombuffer(self.data, np.uint8)
        self.ct = bytearray(capacity)
        self.ct_ptr = buffer_ptr(self.ct)
        self.ct_arr = np.frombuffer(self.ct, np.uint8)
        # (datagram size, full datagrams) -> views for lay_out; few distinct keys.
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def lay_out(self, header: bytes, ct_len: int, room: int) -> int:
        """Write ``ct[:ct_len]`` into ``data`` as datagrams of ``header`` (its
        segment byte set per datagram) followed by up to ``room`` bytes of
        ciphertext.  Returns the total.  One strided copy for all full datagrams,
        not a Python loop per segment."""
        hs = len(header)
        size = hs + room
        full, rem = divmod(ct_len, room)
        total = ct_len + (full + (1 if rem else 0)) * hs
        if total > len(self.data):
            raise ValueError("send buffer too small")
        if full:
            views = self._grids.get((size, full))
            if views is None:
                grid = self.arr[: full * size].reshape(full, size)
                src = self.ct_arr[: full * room].reshape(full, room)
                views = self._grids[(size, full)] = (grid[:, :hs], grid[:, hs:], src)
            heads, bodies, src = views
            np.copyto(bodies, src)
            heads[:] = np.frombuffer(header, np.uint8)
            heads[:, hs - 2] = _SEGMENT_NUMBERS[:full]
        if rem:
            o = full * size
            view = self.view
            view[o : o + hs] = header
            view[o + hs - 2] = full
            view[o + hs : o + hs + rem] = memoryview(self.ct)[full * room : ct_len]
        return total


def compact_untrusted(
    src: np.ndarray,
    off: int,
    end: int,
    count: int,
    size: int,
    first: int,
    counter: int,
    dst: np.ndarray,
) -> int:
    """Copy the bodies of ``count`` consecutive datagrams of ``size`` bytes at
    ``src[off:end]`` (the last may be shorter) back to back into ``dst``, if the
    last of them is segment ``first + count - 1`` of message ``counter``.
    Returns the bytes copied, or -1 if not (the caller then takes them one by one).

    A GRO read holds what one flow sent, in order, so a datagram lost or
    repeated inside the run shifts the last one off its expected place; anything
    else that does not belong makes the whole message fail authentication.
    """
    hs = HEADER.size
    full = count - 1
    last = off + full * size
    if not hs < end - last <= size or end > len(src):
        return -1
    _type, _index, last_counter, last_seg, _nseg = HEADER.unpack_from(src.data, last)
    if last_seg != first + full or last_counter != counter:
        return -1
    room = size - hs
    body = full * room
    if body + end - last - hs > len(dst):
        return -1
    if full:
        dst[:body].reshape(full, room)[:] = src[off:last].reshape(full, size)[:, hs:]
    dst[body : body + end - last - hs] = src[last + hs : end]
    return body + end - last - hs


class PacketType(IntEnum):
    DATA = 1
    HEARTBEAT = 2


HEARD_YOU = 0x01
PROBE = 0x02
_HB = struct.Struct("!BH")


def parse_header_untrusted(
    packet: bytes | bytearray | memoryview, off: int = 0, end: int = -1
) -> tuple[int, int, int, int, int]:
    """Return ``(type, receiver_index, counter, segment, segments)`` of the
    datagram at ``packet[off:end]`` (``end`` -1: the end).  Raises only BadPacket."""
    if (len(packet) if end < 0 else end) - off < HEADER.size:
        raise BadPacket("datagram shorter than the header")
    ptype, index, counter, seg, nseg = HEADER.unpack_from(packet, off)
    if ptype != PacketType.DATA and ptype != PacketType.HEARTBEAT:
        raise BadPacket(f"unknown datagram type {ptype}")
    if not seg < nseg <= MAX_SEGMENTS:
        raise BadPacket("bad segment numbers")
    return ptype, index, counter, seg, nseg


def parse_route_header_untrusted(data: bytes | memoryview) -> tuple[bytes, bytes, int]:
    """``(origin, destination, hops_left)`` of anything relayed with a route
    header (DATA, relayed IPAM messages).  Raises only BadPacket."""
    if len(data) < ROUTE.size:
        raise BadPacket("shorter than a route header")
    origin, dst, hops = ROUTE.unpack_from(data)
    return origin, dst, hops


def parse_route_untrusted(plain: bytes | memoryview) -> tuple[bytes, bytes, int, int]:
    """``(origin, destination, hops_left, first_frame_length)`` of a DATA
    plaintext (the frame length is not checked here).  Raises only BadPacket."""
    if len(plain) < ROUTE_AND_LEN.size:
        raise BadPacket("DATA shorter than its route header")
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
            raise BadPacket("truncated frame length")
        (size,) = FRAME_LEN.unpack_from(plain, pos)
        pos += FRAME_LEN.size
        if size == 0 or pos + size > end:
            raise BadPacket("truncated frame")
        yield view[pos : pos + size]
        pos += size


class _Partial:
    """A message being reassembled: runs of segments, by first segment number."""

    __slots__ = ("missing", "nseg", "runs")

    def __init__(self, nseg: int) -> None:
        self.nseg = nseg
        self.runs: dict[int, tuple[int, bytes]] = {}  # first segment -> (count, bodies)
        self.missing = nseg

    def add(self, first: int, count: int, bodies: bytes) -> None:
        for start, (n, _) in self.runs.items():
            if start < first + count and first < start + n:
                return  # overlaps what we have: a duplicate
        self.runs[first] = (count, bodies)
        self.missing -= count

    def join(self) -> bytes:
        return b"".join(self.runs[k][1] for k in sorted(self.runs))


class DataSession:
    """Crypto, segmentation, reassembly, liveness and path MTU towards one peer."""

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
        self._tag = self._sealer.info.tag_bytes
        self._replay = ReplayWindow()
        self._partial: dict[int, _Partial] = {}
        self._plain = bytearray()  # the last plaintext opened (returned as a view)
        self.local_index = local_index
        self.peer_index = peer_index
        self.udp_timeout = udp_timeout
        self.heard_at = -math.inf
        self._peer_heard_us_at = -math.inf
        self.datagram_size = SAFE_DATAGRAM  # confirmed path MTU, as a UDP payload size
        self.pmtu_confirmed = False
        self._largest_probe_heard = 0
        self._probe_heard_at = -math.inf
        self.tx_packets = self.rx_packets = 0
        self.tx_frames = self.rx_frames = 0
        self.tx_bytes = self.rx_bytes = 0
        self.tx_messages = self.rx_messages = 0
        self.reassembly_drops = 0

    @property
    def tag_bytes(self) -> int:
        return self._sealer.info.tag_bytes

    @property
    def messages_sealed(self) -> int:
        return self._sealer.counter

    def needs_rekey(self, limit: int = REKEY_AFTER_MESSAGES) -> bool:
        return self._sealer.counter >= limit

    @property
    def message_budget(self) -> int:
        """Largest plaintext that still fits one datagram."""
        return self.datagram_size - HEADER.size - self.tag_bytes

    # -- sending --------------------------------------------------------

    def seal_at(
        self,
        ptype: PacketType,
        plaintext: Ptr,
        size: int,
        out: SendBuffer,
        datagram_size: int = 0,
    ) -> tuple[int, int]:
        """Seal the ``size`` bytes of plaintext at ``plaintext`` as one message and
        lay its datagrams out in ``out.data``.

        Datagrams are at most ``datagram_size`` bytes (default: the path MTU).
        Returns ``(total_bytes, datagram_size)``: the datagrams are
        ``out.data[i*size:(i+1)*size]``, the last possibly shorter, ready for one
        UDP GSO send with segment size ``datagram_size``.
        """
        sealer = self._sealer
        counter = sealer.next_counter()
        room = (datagram_size or self.datagram_size) - HEADER.size
        ct_len = size + self._tag
        if ct_len <= room:  # most messages: sealed straight behind the header
            HEADER.pack_into(out.data, 0, ptype, self.peer_index, counter, 0, 1)
            sealer.seal_ptr(counter, out.ptr + HEADER.size, plaintext, size, out.ptr, AD_SIZE)
            self.tx_packets += 1
            self.tx_messages += 1
            return HEADER.size + ct_len, room + HEADER.size
        nseg = -(-ct_len // room)
        if nseg > MAX_SEGMENTS:
            raise ValueError(f"message of {size} bytes needs {nseg} segments")
        header = HEADER.pack(ptype, self.peer_index, counter, 0, nseg)
        sealer.seal_ptr(counter, out.ct_ptr, plaintext, size, readonly_ptr(header), AD_SIZE)
        total = out.lay_out(header, ct_len, room)
        self.tx_packets += nseg
        self.tx_messages += 1
        return total, room + HEADER.size

    def seal_into(
        self,
        ptype: PacketType,
        plaintext: bytes | bytearray | memoryview,
        out: SendBuffer,
        datagram_size: int = 0,
    ) -> tuple[int, int]:
        """``seal_at`` for a plaintext given as bytes."""
        return self.seal_at(ptype, readonly_ptr(plaintext), len(plaintext), out, datagram_size)

    def seal(self, ptype: PacketType, plaintext: bytes, datagram_size: int = 0) -> list[bytes]:
        """Seal one message; return its datagrams (for tests and rare messages)."""
        out = SendBuffer(len(plaintext) + self._tag + MAX_SEGMENTS * HEADER.size)
        total, size = self.seal_into(ptype, plaintext, out, datagram_size)
        return [bytes(out.data[i : min(i + size, total)]) for i in range(0, total, size)]

    # -- receiving ------------------------------------------------------

    def receive_untrusted(
        self, datagram: bytes | memoryview, counter: int, seg: int, nseg: int, now: float
    ) -> memoryview | None:
        """Take one datagram (header already parsed).  Returns the plaintext once the
        message is whole and authentic, else None.  Raises only BadPacket."""
        if nseg == 1:
            return self.open_untrusted(datagram[:AD_SIZE], counter, datagram[HEADER.size :], 1, now)
        return self.receive_run_untrusted(
            datagram[:AD_SIZE], counter, seg, 1, nseg, bytes(datagram[HEADER.size :]), now
        )

    def receive_run_untrusted(
        self,
        ad: bytes | memoryview,
        counter: int,
        first: int,
        count: int,
        nseg: int,
        bodies: bytes,
        now: float,
    ) -> memoryview | None:
        """Take segments first..first+count-1 of a message (their bodies joined).
        Returns the plaintext once the message is whole and authentic, else None.
        Raises only BadPacket."""
        if not self._replay.would_accept(counter):
            raise BadPacket("replayed or too old")
        if count == nseg:
            return self.open_untrusted(ad, counter, bodies, nseg, now)
        partial = self._partial.get(counter)
        if partial is None:
            if len(self._partial) >= MAX_PARTIAL:
                # Forget the oldest message still missing segments.
                del self._partial[next(iter(self._partial))]
                self.reassembly_drops += 1
            partial = self._partial[counter] = _Partial(nseg)
        elif partial.nseg != nseg:
            raise BadPacket("segment count changed")
        partial.add(first, count, bodies)
        if partial.missing:
            return None
        del self._partial[counter]
        return self.open_untrusted(ad, counter, partial.join(), nseg, now)

    def open_at_untrusted(
        self, ad: Ptr, counter: int, ct: Ptr, ct_len: int, nseg: int, now: float, out: Ptr
    ) -> int:
        """Authenticate and decrypt a whole message of ``ct_len`` bytes at ``ct``
        (its associated data at ``ad``) into ``out``, which has room for it.
        Returns the plaintext length.  Raises only BadPacket."""
        replay = self._replay
        if counter <= replay.top and not replay.would_accept(counter):
            raise BadPacket("replayed or too old")
        size = ct_len - self._tag
        if size < 0:
            raise BadPacket("ciphertext too short")
        if not self._opener.open_ptr(counter, out, ct, ct_len, ad, AD_SIZE):
            raise BadPacket("authentication failed")
        replay.accept(counter)
        if self._partial:
            self._partial.pop(counter, None)
        self.heard_at = now
        self.rx_packets += nseg
        self.rx_messages += 1
        return size

    def open_untrusted(
        self, ad: bytes | memoryview, counter: int, ct: bytes | memoryview, nseg: int, now: float
    ) -> memoryview:
        """``open_at_untrusted`` for bytes.  The plaintext is a view of a buffer
        this session reuses: valid until the next message is opened this way."""
        if len(ad) != AD_SIZE:
            raise BadPacket("bad associated data")
        if len(self._plain) < len(ct):
            # A new buffer, not a resized one: views of the old stay valid.
            self._plain = bytearray(max(len(ct), 2048))
        size = self.open_at_untrusted(
            readonly_ptr(ad), counter, readonly_ptr(ct), len(ct), nseg, now, buffer_ptr(self._plain)
        )
        return memoryview(self._plain)[:size]

    # -- heartbeats and path MTU ----------------------------------------

    def heartbeats(self, now: float, *, probe: bool) -> list[bytes]:
        """The heartbeat to send now, plus path-MTU probes when ``probe``."""
        flags = HEARD_YOU if self.hears_peer(now) else 0
        fresh = now - self._probe_heard_at < PROBE_MEMORY
        heard = self._largest_probe_heard if fresh else 0
        out = self.seal(PacketType.HEARTBEAT, _HB.pack(flags, heard))
        if probe:
            overhead = HEADER.size + self.tag_bytes
            for size in PROBE_SIZES:
                if size <= self.datagram_size and self.pmtu_confirmed:
                    break
                pad = bytes(size - overhead - _HB.size)
                out += self.seal(PacketType.HEARTBEAT, _HB.pack(flags | PROBE, 0) + pad, size)
        return out

    def on_heartbeat(self, plain: bytes | memoryview, datagram_len: int, now: float) -> None:
        if len(plain) < _HB.size:
            return
        flags, peer_heard = _HB.unpack_from(plain)
        if flags & HEARD_YOU:
            self._peer_heard_us_at = now
        if flags & PROBE:
            if now - self._probe_heard_at >= PROBE_MEMORY:
                self._largest_probe_heard = 0  # an old round: the path may have shrunk
            self._largest_probe_heard = max(self._largest_probe_heard, datagram_len)
            self._probe_heard_at = now
        if peer_heard >= SAFE_DATAGRAM and (
            not self.pmtu_confirmed or peer_heard > self.datagram_size
        ):
            self.datagram_size = min(peer_heard, PROBE_SIZES[0])
            self.pmtu_confirmed = True

    def path_too_small(self) -> None:
        """The kernel said EMSGSIZE: fall back to the safe size and probe again."""
        self.datagram_size = SAFE_DATAGRAM
        self.pmtu_confirmed = False

    def hears_peer(self, now: float) -> bool:
        return now - self.heard_at < self.udp_timeout

    def established(self, now: float) -> bool:
        """True when authenticated UDP flows both ways."""
        return self.hears_peer(now) and now - self._peer_heard_us_at < self.udp_timeout


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
