"""Send a gratuitous ARP for an address from inside a namespace.

``mesh attach`` calls ``send_garp`` with the container's namespace: the
packet socket is made inside it.  ``python -m meshrouter.host.garp IFACE IPV4`` does
the same from the namespace it runs in.  A rare control frame, so it is built
here with ``struct`` rather than scapy to keep the image small.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
import sys

from meshrouter.host.netns import entered

ETH_P_ARP = 0x0806
SIOCGIFHWADDR = 0x8927


def garp_frame(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    bcast = b"\xff" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, bytes(6), ip.packed)
    return bcast + mac + struct.pack("!H", ETH_P_ARP) + arp


def send_garp(
    iface: str, ip: ipaddress.IPv4Address, count: int = 1, ns_path: str | None = None
) -> bytes:
    """Announce ``ip`` on ``iface`` (in the namespace at ``ns_path``, or here);
    returns the interface's MAC address."""
    with contextlib.ExitStack() as stack:
        if ns_path is not None:
            stack.enter_context(entered(ns_path))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            # /sys shows the namespace we were started from, so ask the kernel directly.
            req = struct.pack("256s", iface.encode()[:15])
            mac = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
            s.bind((iface, ETH_P_ARP))
            for _ in range(count):
                s.send(garp_frame(mac, ip))
    return mac


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m meshrouter.host.garp IFACE IPV4", file=sys.stderr)
        return 2
    send_garp(argv[0], ipaddress.IPv4Address(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
