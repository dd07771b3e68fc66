"""Forwarding entries of the VXLAN device, written over rtnetlink (no process
per change): for each MAC on a trusted peer's kernel path, one entry in the
VXLAN device's own table (MAC -> the peer's underlay address) and one static,
sticky entry in the bridge's table (MAC -> the VXLAN port), so the bridge
neither floods it nor lets learning move it.  Blocking but quick (one
datagram and its ack per request)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLMSG_ERROR = 2
AF_BRIDGE = 7
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
NTF_SELF, NTF_MASTER, NTF_STICKY = 0x02, 0x04, 0x40
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80

_NLMSG = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BBHiHBB")
_RTA = struct.Struct("=HH")


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + bytes(-len(raw) % 4)


def neigh_message(
    kind: int, seq: int, ifindex: int, mac: bytes, *, dst: str | None, master: int | None
) -> bytes:
    """One RTM_NEWNEIGH/RTM_DELNEIGH request for the bridge family."""
    if master is not None:  # the bridge's entry: static, sticky
        ndm = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_NOARP, NTF_MASTER | NTF_STICKY, 0)
        attrs = _attr(NDA_LLADDR, mac) + _attr(NDA_MASTER, struct.pack("=I", master))
    else:  # the VXLAN device's own entry
        ndm = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, NUD_PERMANENT, NTF_SELF, 0)
        attrs = _attr(NDA_LLADDR, mac)
        if dst is not None:
            attrs += _attr(NDA_DST, ipaddress.ip_address(dst).packed)  # 4 or 16 bytes
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWNEIGH:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    body = ndm + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body


class FdbWriter:
    def __init__(self, vxlan: str, bridge: str) -> None:
        self.vxlan = socket.if_nametoindex(vxlan)
        self.bridge = socket.if_nametoindex(bridge)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self._seq = 0

    def _request(self, message: bytes) -> None:
        self.sock.send(message)
        while True:
            data = self.sock.recv(65536)
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(data, pos)
                if kind == NLMSG_ERROR and seq == self._seq:
                    (code,) = struct.unpack_from("=i", data, pos + _NLMSG.size)
                    if code < 0 and -code != errno.ENOENT:  # removing what is gone: fine
                        raise OSError(-code, os.strerror(-code))
                    return
                pos += max(length, _NLMSG.size)

    def _send(self, kind: int, mac: bytes, dst: str | None, master: bool) -> None:
        self._seq += 1
        self._request(
            neigh_message(
                kind, self._seq, self.vxlan, mac, dst=dst, master=self.bridge if master else None
            )
        )

    def add(self, mac: bytes, dst: str) -> None:
        self._send(RTM_NEWNEIGH, mac, dst, False)
        self._send(RTM_NEWNEIGH, mac, None, True)

    def remove(self, mac: bytes) -> None:
        self._send(RTM_DELNEIGH, mac, None, True)  # the bridge first: no frame to a dead end
        self._send(RTM_DELNEIGH, mac, None, False)

    def close(self) -> None:
        self.sock.close()
