"""TCP superframes cut into segments and put back together (sans-IO): the
reference model for issue 22's data path, where each datagram is sealed on its
own so that a lost one costs one TCP segment, not 44.

What the TAP hands over with TSO on is ``virtio_net_hdr || Ethernet || IP ||
TCP || payload`` of up to 64 KiB, with ``gso_type`` TCPV4 or TCPV6, ``gso_size``
the MSS, ``NEEDS_CSUM`` and the TCP checksum field holding the pseudo-header
sum over the whole TCP length ("partial", what the kernel leaves for the
device to finish).  ``segment_untrusted`` cuts one into MSS-sized frames the
way a NIC (or the kernel's ``tcp_gso_segment``) does:

* IPv4: total length and header checksum per segment, the IP ID counting up
  from the superframe's; IPv6: the payload length;
* TCP: sequence numbers advance by the payload before; FIN and PSH only on the
  last segment, CWR only on the first; URG and the urgent pointer only on the
  first (the model keeps urgent data in the first segment's reach);
* the checksum either left partial for a receiving TAP that takes
  ``NEEDS_CSUM`` (``full=False``), or computed in full (``full=True``), for
  whatever cannot finish it.

``coalesce`` does the reverse over a batch of frames as they arrived:
consecutive in-order segments of one flow (same addresses, ports, IP header
but its length, ID and checksum; same TCP options and flags but PSH and FIN;
every segment but the last of one size) become one superframe with a GSO
header, ready for the TAP; it flushes on a gap, a flag that must end a
superframe (FIN, PSH, RST, SYN, URG on a later segment), another flow, a
change of size or the end of the batch.  Anything else passes through as it
came.  The law the tests hold it to: ``coalesce(segment(S)) == [S]`` for any
superframe ``S`` in the kernel's form, IPv4 or IPv6, with options, any MSS.

Frames here always carry their 10-byte virtio header.  Only
``segment_untrusted`` reads bytes from a peer's side of the tunnel: it raises
nothing but ``BadPacket``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from meshrouter.base.errors import BadPacket

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
NEEDS_CSUM = 0x01
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
GSO_ECN = 0x80
ETH_LEN = 14
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
PROTO_TCP = 6
TCP_CSUM_OFFSET = 16
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
MAX_SUPERFRAME = 65535 + ETH_LEN  # what one GSO frame may carry (the IP length field)


def _sum16(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """One's-complement sum of ``data`` as big-endian 16-bit words, unfolded."""
    total = start
    n = len(data)
    words: tuple[int, ...] = struct.unpack_from(f"!{n // 2}H", data)
    total += sum(words)
    if n & 1:
        total += data[-1] << 8
    return total


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_checksum(header: bytes | bytearray) -> int:
    return ~_fold(_sum16(header)) & 0xFFFF


def _pseudo(ip: bytes | bytearray, version: int, tcp_len: int) -> int:
    """The unfolded sum of the pseudo-header (addresses, protocol, TCP length)."""
    if version == 4:
        return _sum16(ip[12:20]) + PROTO_TCP + tcp_len
    return _sum16(ip[8:40]) + PROTO_TCP + (tcp_len >> 16) + (tcp_len & 0xFFFF)


def partial_checksum(ip: bytes | bytearray, version: int, tcp_len: int) -> int:
    """What a CHECKSUM_PARTIAL frame holds in the TCP checksum field."""
    return _fold(_pseudo(ip, version, tcp_len))


def tcp_checksum(ip: bytes | bytearray, version: int, tcp: bytes | bytearray) -> int:
    """The full TCP checksum of segment ``tcp`` (header and payload, its
    checksum field taken as zero)."""
    body = bytearray(tcp)
    body[TCP_CSUM_OFFSET : TCP_CSUM_OFFSET + 2] = b"\0\0"
    return ~_fold(_pseudo(ip, version, len(tcp)) + _sum16(body)) & 0xFFFF


class _Headers:
    """Where the parts of one TCP frame are (offsets from the Ethernet header)."""

    __slots__ = ("flags", "ip", "ip_len", "seq", "tcp", "tcp_len", "version")

    def __init__(self, frame: bytes | bytearray | memoryview) -> None:
        """Raises BadPacket unless ``frame`` (Ethernet on) is TCP over IPv4
        (options allowed) or IPv6 (no extension header) with whole headers."""
        if len(frame) < ETH_LEN + 20:
            raise BadPacket("frame too short for IP", "runt_frame")
        ethertype = int.from_bytes(frame[12:14], "big")
        self.ip = ETH_LEN
        if ethertype == ETH_IPV4:
            if frame[ETH_LEN] >> 4 != 4:
                raise BadPacket("IPv4 frame of another version", "bad_packet")
            self.version = 4
            self.ip_len = (frame[ETH_LEN] & 0x0F) * 4
            if self.ip_len < 20 or frame[ETH_LEN + 9] != PROTO_TCP:
                raise BadPacket("not TCP over IPv4", "bad_packet")
            if int.from_bytes(frame[ETH_LEN + 6 : ETH_LEN + 8], "big") & 0x3FFF:
                raise BadPacket("an IPv4 fragment", "bad_packet")
        elif ethertype == ETH_IPV6:
            if len(frame) < ETH_LEN + 40 or frame[ETH_LEN] >> 4 != 6:
                raise BadPacket("short or bad IPv6 header", "bad_packet")
            self.version = 6
            self.ip_len = 40
            if frame[ETH_LEN + 6] != PROTO_TCP:
                raise BadPacket("not TCP right after the IPv6 header", "bad_packet")
        else:
            raise BadPacket("neither IPv4 nor IPv6", "bad_packet")
        self.tcp = self.ip + self.ip_len
        if len(frame) < self.tcp + 20:
            raise BadPacket("frame too short for TCP", "runt_frame")
        self.tcp_len = (frame[self.tcp + 12] >> 4) * 4
        if self.tcp_len < 20 or len(frame) < self.tcp + self.tcp_len:
            raise BadPacket("bad TCP data offset", "bad_packet")
        self.seq = int.from_bytes(frame[self.tcp + 4 : self.tcp + 8], "big")
        self.flags = frame[self.tcp + 13]

    @property
    def end(self) -> int:
        """Where the payload starts."""
        return self.tcp + self.tcp_len


def _vnet(gso_type: int, hdr_len: int, gso_size: int, csum_start: int, partial: bool) -> bytes:
    if not partial:
        return VNET.pack(0, gso_type, hdr_len, gso_size, 0, 0)
    return VNET.pack(NEEDS_CSUM, gso_type, hdr_len, gso_size, csum_start, TCP_CSUM_OFFSET)


def _finish(buf: bytearray, h: _Headers, payload_len: int, full: bool) -> None:
    """Lengths, IPv4 header checksum and the TCP checksum of one frame built in ``buf``."""
    ip, tcp = h.ip, h.tcp
    tcp_total = h.tcp_len + payload_len
    if h.version == 4:
        struct.pack_into("!H", buf, ip + 2, h.ip_len + tcp_total)
        struct.pack_into("!H", buf, ip + 10, 0)
        struct.pack_into("!H", buf, ip + 10, ip_checksum(buf[ip : ip + h.ip_len]))
    else:
        struct.pack_into("!H", buf, ip + 4, tcp_total)
    ip_hdr = buf[ip : ip + h.ip_len]
    if full:
        check = tcp_checksum(ip_hdr, h.version, buf[tcp : tcp + tcp_total])
    else:
        check = partial_checksum(ip_hdr, h.version, tcp_total)
    struct.pack_into("!H", buf, tcp + TCP_CSUM_OFFSET, check)


def segment_untrusted(data: bytes | bytearray | memoryview, *, full: bool = False) -> list[bytes]:
    """``data`` (virtio header and frame) as the frames a NIC would send: a
    TCPV4/TCPV6 GSO frame cut into ``gso_size`` segments, each with its own
    virtio header (``NEEDS_CSUM`` and a partial checksum, or with ``full`` a
    computed one and no flag); any other frame as it is.  Raises BadPacket
    for a GSO frame that is not what its header says."""
    if len(data) < VNET_LEN:
        raise BadPacket("shorter than a virtio header", "runt_frame")
    _flags, gso_type, _hdr_len, mss, _cs, _co = VNET.unpack_from(data)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        return [bytes(data)]
    if kind not in (GSO_TCPV4, GSO_TCPV6):
        raise BadPacket(f"GSO type {gso_type} is not TCP", "bad_packet")
    frame = memoryview(data)[VNET_LEN:]
    if len(frame) > MAX_SUPERFRAME:
        raise BadPacket("superframe larger than 64 KiB", "message_too_large")
    h = _Headers(frame)
    if (kind == GSO_TCPV4) != (h.version == 4):
        raise BadPacket("GSO type and IP version disagree", "bad_packet")
    if h.flags & (SYN | RST):
        raise BadPacket("SYN or RST in a superframe", "bad_packet")
    payload = frame[h.end :]
    if not 0 < mss <= 65535 or not payload:
        raise BadPacket("GSO frame without payload or MSS", "bad_packet")
    head = bytes(frame[: h.end])
    ip_id = int.from_bytes(head[h.ip + 4 : h.ip + 6], "big") if h.version == 4 else 0
    out: list[bytes] = []
    count = (len(payload) + mss - 1) // mss
    for i in range(count):
        chunk = payload[i * mss : (i + 1) * mss]
        buf = bytearray(head)
        buf += chunk
        if h.version == 4:
            struct.pack_into("!H", buf, h.ip + 4, (ip_id + i) & 0xFFFF)
        struct.pack_into("!I", buf, h.tcp + 4, (h.seq + i * mss) & 0xFFFFFFFF)
        tcp_flags = h.flags
        if i < count - 1:
            tcp_flags &= ~(FIN | PSH)
        if i:
            tcp_flags &= ~(CWR | URG)
            struct.pack_into("!H", buf, h.tcp + 18, 0)  # the urgent pointer: first segment's
        buf[h.tcp + 13] = tcp_flags
        _finish(buf, h, len(chunk), full)
        vnet = _vnet(GSO_NONE, 0, 0, h.tcp, not full)
        out.append(vnet + bytes(buf))
    return out


def payload_offset(data: bytes | bytearray | memoryview) -> int:
    """Where the payload of the TCP frame ``data`` (virtio header on) starts.
    Raises only BadPacket."""
    return VNET_LEN + _Headers(memoryview(data)[VNET_LEN:]).end


def with_mss(data: bytes | bytearray | memoryview, most: int) -> bytes:
    """The GSO frame ``data`` with its MSS cut down to ``most`` (cutting finer
    than the sender's stack asked is always allowed)."""
    mss = VNET.unpack_from(data)[3]
    if mss <= most:
        return bytes(data)
    return bytes(data[:4]) + struct.pack("<H", most) + bytes(data[6:])


def _flow_key(frame: bytes | bytearray, h: _Headers) -> bytes:
    """What must be equal for two segments to join: the Ethernet header, the
    IP header but for its length, ID and checksum (addresses, TOS, TTL and
    options for IPv4; addresses, class, flow label, hop limit for IPv6), the
    ports, the ACK number, window, options and every flag but PSH, FIN, CWR
    and URG (those differ between the segments of one superframe)."""
    ip, tcp = h.ip, h.tcp
    if h.version == 4:
        ip_part = frame[ip : ip + 2] + frame[ip + 6 : ip + 10] + frame[ip + 12 : ip + h.ip_len]
    else:
        ip_part = frame[ip : ip + 4] + frame[ip + 6 : ip + 40]
    tcp_part = (
        frame[tcp : tcp + 4]  # ports
        + frame[tcp + 8 : tcp + 12]  # ack
        + bytes([frame[tcp + 12], frame[tcp + 13] & ~(PSH | FIN | CWR | URG)])
        + frame[tcp + 14 : tcp + 16]  # window
        + frame[tcp + 20 : tcp + h.tcp_len]  # options
    )
    return bytes(frame[:ETH_LEN]) + bytes(ip_part) + bytes(tcp_part)


class _Run:
    """Segments being joined: the first one's headers, the payloads so far."""

    __slots__ = ("first", "h", "ip_id", "key", "last_flags", "mss", "next_seq", "parts", "short")

    def __init__(self, frame: bytes, h: _Headers, key: bytes) -> None:
        self.first, self.h, self.key = frame, h, key
        self.mss = len(frame) - h.end
        self.parts = [frame[h.end :]]
        self.next_seq = (h.seq + self.mss) & 0xFFFFFFFF
        self.ip_id = int.from_bytes(frame[h.ip + 4 : h.ip + 6], "big") if h.version == 4 else 0
        self.last_flags = h.flags
        self.short = False  # a segment shorter than mss came: nothing may follow

    def takes(self, frame: bytes, h: _Headers, key: bytes) -> bool:
        size = len(frame) - h.end
        if self.short or self.last_flags & (PSH | FIN) or key != self.key:
            return False
        if h.seq != self.next_seq or size == 0 or size > self.mss or h.flags & (CWR | URG):
            return False
        if h.version == 4:
            ip_id = int.from_bytes(frame[h.ip + 4 : h.ip + 6], "big")
            if ip_id != (self.ip_id + len(self.parts)) & 0xFFFF:
                return False
        total = len(self.first) + sum(len(p) for p in self.parts[1:]) + size
        return total - ETH_LEN <= 65535

    def add(self, frame: bytes, h: _Headers) -> None:
        size = len(frame) - h.end
        self.parts.append(frame[h.end :])
        self.next_seq = (self.next_seq + size) & 0xFFFFFFFF
        self.last_flags = h.flags
        self.short = size < self.mss

    def frame(self) -> bytes:
        """One frame for the TAP: the segment itself, or a GSO superframe."""
        h = self.h
        if len(self.parts) == 1:
            return _vnet(GSO_NONE, 0, 0, h.tcp, True) + _rechecked(self.first, h)
        buf = bytearray(self.first[: h.end])
        buf += b"".join(self.parts)
        buf[h.tcp + 13] = (buf[h.tcp + 13] & ~(PSH | FIN)) | (self.last_flags & (PSH | FIN))
        payload_len = len(buf) - h.end
        _finish(buf, h, payload_len, full=False)
        gso = GSO_TCPV4 if h.version == 4 else GSO_TCPV6
        if buf[h.tcp + 13] & CWR:
            gso |= GSO_ECN
        return _vnet(gso, h.end, self.mss, h.tcp, True) + bytes(buf)


def _rechecked(frame: bytes, h: _Headers) -> bytes:
    """A segment going to the TAP alone, its checksum left partial (the TAP
    finishes it, or the stack trusts NEEDS_CSUM)."""
    buf = bytearray(frame)
    _finish(buf, h, len(buf) - h.end, full=False)
    return bytes(buf)


def _tcp_segment(data: bytes) -> _Headers | None:
    """The headers of a plain (not GSO) TCP frame, or None for anything else."""
    if len(data) < VNET_LEN or data[1] != GSO_NONE:
        return None
    try:
        return _Headers(data[VNET_LEN:])
    except BadPacket:
        return None


def coalesce(frames: Iterable[bytes]) -> list[bytes]:
    """A batch of received frames (each with its virtio header), in order,
    with runs of in-order TCP segments of one flow joined into superframes.
    Frames that are no plain TCP segment with payload pass through as they
    came, and end the run they would interrupt only if of the same flow."""
    runs: dict[bytes, _Run] = {}  # the open run of each flow
    order: list[_Run | bytes] = []  # runs and passed-through frames, in output order

    def close(key: bytes) -> None:
        runs.pop(key, None)

    for data in frames:
        frame = data[VNET_LEN:]
        h = _tcp_segment(data)
        if h is None:
            order.append(data)
            continue
        key = _flow_key(frame, h)
        run = runs.get(key)
        payload = len(frame) - h.end
        if payload == 0 or h.flags & (SYN | RST):
            close(key)  # a pure ACK, SYN or RST of this flow ends its run: order kept
            order.append(data)
            continue
        if run is not None and run.takes(frame, h, key):
            run.add(frame, h)
            continue
        close(key)
        run = runs[key] = _Run(frame, h, key)
        order.append(run)
    return [item.frame() if isinstance(item, _Run) else item for item in order]
