"""The TAP device the data plane reads and writes (pytun), on the mesh bridge."""

from __future__ import annotations

import fcntl
import os
import struct

import pytun

from meshrouter.base.constants import VNET_HDR_LEN
from meshrouter.host.netdev import NetdevError, ip

# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08


class Tap:
    """A TAP device on the bridge, opened non-blocking.  Goes away when closed.

    Every frame read or written starts with a 10-byte virtio_net_hdr.  With
    ``offload`` the kernel may hand us TCP superframes of up to 64 KiB with
    their checksums left to do (TSO and checksum offload), and accepts the
    same on write, so frames cross the tunnel whole and Python never segments
    or checksums.  Without it, every frame is at most the MTU and complete.
    """

    def __init__(self, name: str, bridge: str, mtu: int, *, offload: bool = True) -> None:
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as exc:
            raise NetdevError(f"cannot open TAP device {name!r}: {exc}") from exc
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        try:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            self.offload = False
            if offload:
                try:
                    fcntl.ioctl(
                        self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
                    )
                    self.offload = True
                except OSError:
                    pass  # an old kernel: plain frames, still correct
        except OSError as exc:
            self._dev.close()
            raise NetdevError(f"TAP device {name!r}: cannot set the virtio header: {exc}") from exc
        os.set_blocking(self.fd, False)
        self._dev.persist(False)
        ip("link", "set", "dev", self.name, "mtu", str(mtu))
        ip("link", "set", "dev", self.name, "master", bridge)
        ip("link", "set", "dev", self.name, "up")

    def close(self) -> None:
        self._dev.close()
