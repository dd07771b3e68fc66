"""The UDP socket of the data plane, with UDP GSO on send and GRO on receive.

Both are Linux features that may be missing (old kernel, odd path): a failed
GSO send falls back to one ``sendto`` per datagram for good, and without GRO
every datagram is read on its own.  The forwarder reads with libc's recvmsg
(see ``libc.RecvMsg``) and takes the segment size from the UDP_GRO control
message to walk coalesced datagrams.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections import Counter

from meshrouter.base.constants import LISTEN_ALL

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3  # set DF, do not trust the route cache's PMTU: we probe ourselves
GSO_MAX_BYTES = 65000  # one GSO send stays below the 64 KiB UDP limit
_SEG = struct.Struct("=H")


IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_PROBE = 3
IPV6_DONTFRAG = 62  # IPv6 lets the sender fragment: never, we probe the path ourselves


def open_udp(host: str, port: int) -> socket.socket:
    """The data plane's socket: for ``LISTEN_ALL``, IPv6 with IPv4-mapped addresses
    (dual-stack), or IPv4 alone where the kernel has no IPv6; for an IPv4
    address (``0.0.0.0`` too) IPv4 alone; for an IPv6 address IPv6 alone."""
    if host in LISTEN_ALL:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:  # no IPv6 in this kernel
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            host = "0.0.0.0"
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            host = "::"
    elif ":" in host:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            with contextlib.suppress(PermissionError):  # not root: keep the default
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        # Don't fragment, whatever the kernel thinks the path's MTU is: pmtu.py
        # probes it.  IPv4's option applies to the IPv4 peers of a dual-stack one.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        if sock.family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def wire_address(family: int, addr: tuple[str, int]) -> tuple[str, int]:
    """``addr`` as a socket of ``family`` takes it: an IPv4 host on an IPv6
    (dual-stack) socket as ``::ffff:a.b.c.d``."""
    if family == socket.AF_INET6 and ":" not in addr[0]:
        return f"::ffff:{addr[0]}", addr[1]
    return addr


class UdpSocket:
    def __init__(self, host: str, port: int, *, gso: bool = True, gro: bool = True) -> None:
        sock = open_udp(host, port)
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self._wire: dict[tuple[str, int], tuple[str, int]] = {}  # peer -> as the socket takes it
        self.gso = gso
        self.gro = False
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self.errors: Counter[str] = Counter()
        self.gso_sends = 0
        self.plain_sends = 0

    def sendto(self, data: bytes | memoryview, addr: tuple[str, int]) -> None:
        """One datagram to ``addr``, of either family.  Raises OSError."""
        self.sock.sendto(data, self._wire.get(addr) or self._map(addr))

    def _map(self, addr: tuple[str, int]) -> tuple[str, int]:
        if len(self._wire) > 4096:  # peers come and go (NATs move them): stay small
            self._wire.clear()
        wired = self._wire[addr] = wire_address(self.family, addr)
        return wired

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, buf: bytearray, total: int, size: int, addr: tuple[str, int]) -> int:
        """Send the datagrams laid out in ``buf[:total]`` (each ``size`` bytes, the
        last maybe shorter).  Returns an errno (0 on success) so the caller can
        react to EMSGSIZE; never raises."""
        view = memoryview(buf)
        sock = self.sock
        addr = self._wire.get(addr) or self._map(addr)
        try:
            if total <= size:
                sock.sendto(view[:total], addr)
                self.plain_sends += 1
            elif self.gso:
                step = (GSO_MAX_BYTES // size) * size
                cmsg = [(SOL_UDP, UDP_SEGMENT, _SEG.pack(size))]
                for start in range(0, total, step):
                    sock.sendmsg([view[start : min(start + step, total)]], cmsg, 0, addr)
                    self.gso_sends += 1
            else:
                for start in range(0, total, size):
                    sock.sendto(view[start : min(start + size, total)], addr)
                    self.plain_sends += 1
        except BlockingIOError:
            self.errors[send_error(errno.EAGAIN)] += 1
            return errno.EAGAIN
        except OSError as exc:
            code = exc.errno or 0
            if self.gso and code in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                self.gso = False  # the kernel or device cannot: plain sends from now on
                self.errors["gso unsupported, fell back"] += 1
                return self.send(buf, total, size, addr)
            self.errors[send_error(code)] += 1
            return code
        return 0


def send_error(code: int) -> str:
    """The drop reason of a failed send with ``code`` (errno), whichever loop sent."""
    return "send_would_block" if code == errno.EAGAIN else "send_failed"
