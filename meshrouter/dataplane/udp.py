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

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3  # set DF, do not trust the route cache's PMTU: we probe ourselves
GSO_MAX_BYTES = 65000  # one GSO send stays below the 64 KiB UDP limit
_SEG = struct.Struct("=H")


class UdpSocket:
    def __init__(self, host: str, port: int, *, gso: bool = True, gro: bool = True) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            with contextlib.suppress(PermissionError):  # not root: keep the default
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        sock.bind((host, port))
        sock.setblocking(False)
        self.sock = sock
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
