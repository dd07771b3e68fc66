"""Send a gratuitous ARP for an address from inside a namespace.

Run as ``python -m launcher.garp IFACE IPV4`` inside the container's network
namespace (the launcher does this with nsenter).  A rare control frame, so it
is built here with ``struct`` rather than scapy to keep the image small.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import sys

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927


def garp_frame(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    bcast = b"\xff" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, bytes(6), ip.packed)
    return bcast + mac + struct.pack("!H", ETH_P_ARP) + arp


def send_garp(iface: str, ip: ipaddress.IPv4Address, count: int = 1) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        # /sys shows the namespace we were started from, so ask the kernel directly.
        req = struct.pack("256s", iface.encode()[:15])
        mac = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
        s.bind((iface, ETH_P_ARP))
        for _ in range(count):
            s.send(garp_frame(mac, ip))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m launcher.garp IFACE IPV4", file=sys.stderr)
        return 2
    send_garp(argv[0], ipaddress.IPv4Address(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
