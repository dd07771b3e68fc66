"""TCP superframes as a TAP with TSO hands them over, for tests and benchmarks."""

from __future__ import annotations

import random
import struct

from meshrouter.dataplane import tso


def build(
    v: int,
    rnd: random.Random,
    *,
    ip_opts: int = 0,
    tcp_opts: int = 3,
    mss: int = 1448,
    payload_len: int = 20000,
    flags: int = tso.ACK | tso.PSH,
) -> tuple[bytes, int]:
    """A TSO superframe as the TAP gives it: virtio header (NEEDS_CSUM, TCPV4
    or TCPV6, MSS), Ethernet, IP (IPv4 with options, DF, a valid header
    checksum), TCP (options, flags, the partial checksum), the payload.
    Returns it and the MSS."""
    ip_len = 20 + 4 * ip_opts if v == 4 else 40
    tcp_len = 20 + 4 * tcp_opts
    payload = rnd.randbytes(payload_len)
    eth = rnd.randbytes(12) + struct.pack("!H", tso.ETH_IPV4 if v == 4 else tso.ETH_IPV6)
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            rnd.randrange(1, 65536),
            rnd.randrange(1, 65536),
            rnd.getrandbits(32),  # seq: wraps too
            rnd.getrandbits(32),
            (tcp_len // 4) << 4,
            flags,
            rnd.randrange(65536),
            0,
            rnd.randrange(65536) if flags & tso.URG else 0,
        )
    )
    tcp += rnd.randbytes(tcp_len - 20)
    total_tcp = tcp_len + payload_len
    if v == 4:
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s",
                0x40 | ip_len // 4,
                rnd.randrange(256),
                ip_len + total_tcp,
                rnd.randrange(65536),
                0x4000,
                rnd.randrange(1, 256),
                tso.PROTO_TCP,
                0,
                rnd.randbytes(4),
                rnd.randbytes(4),
            )
        )
        ip += rnd.randbytes(ip_len - 20)
        struct.pack_into("!H", ip, 10, tso.ip_checksum(ip))
    else:
        ip = bytearray(
            struct.pack("!IHBB", 0x60000000 | rnd.getrandbits(28), total_tcp, tso.PROTO_TCP, 64)
        )
        ip += rnd.randbytes(32)
    struct.pack_into("!H", tcp, 16, tso.partial_checksum(ip, v, total_tcp))
    gso = (tso.GSO_TCPV4 if v == 4 else tso.GSO_TCPV6) | (tso.GSO_ECN if flags & tso.CWR else 0)
    tcp_at = tso.ETH_LEN + ip_len
    head = tso.VNET.pack(tso.NEEDS_CSUM, gso, tcp_at + tcp_len, mss, tcp_at, 16)
    return head + eth + bytes(ip) + bytes(tcp) + payload, mss


def superframe(
    dst: bytes, src: bytes, seed: int = 0, *, mss: int = 1000, payload_len: int = 40000
) -> bytes:
    """An IPv4 TSO superframe from MAC ``src`` to MAC ``dst``."""
    sf, _ = build(4, random.Random(seed), mss=mss, payload_len=payload_len)
    return sf[:10] + dst + src + sf[22:]
