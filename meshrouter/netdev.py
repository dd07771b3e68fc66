"""Host network devices: the bridge and the TAP device (thin wrappers over ``ip``/pytun)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytun

from .constants import VNET_HDR_LEN
from .errors import MeshError
from .state import take_bridge_made

# linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08


class NetdevError(MeshError):
    pass


def _tool(tool: str, args: tuple[str, ...], check: bool) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = proc.stderr.strip() or proc.stdout.strip()
        raise NetdevError(f"'{tool} {' '.join(args)}' failed: {msg}")
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _tool("ip", args, check)


def bridge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """iproute2's ``bridge`` (port flags such as ``isolated``)."""
    return _tool("bridge", args, check)


def nft(script: str) -> None:
    """Run an nft script (``nft -f -``).  Raises NetdevError with nft's complaint."""
    if shutil.which("nft") is None:
        raise NetdevError("nft (nftables) is not installed: apt-get install nftables")
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetdevError(f"nft failed: {proc.stderr.strip().splitlines()[-1:]}")


def delete_table(family: str, name: str) -> None:
    if shutil.which("nft") is not None:
        subprocess.run(["nft", "delete", "table", family, name], capture_output=True, check=False)


def link_exists(name: str) -> bool:
    """Whether interface ``name`` exists in this thread's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:  # no such device, or a name no interface can have
        return False
    return True


def ensure_bridge(name: str, mtu: int) -> bool:
    """Create bridge ``name`` if it is missing; return True if we made it."""
    made = False
    if not link_exists(name):
        ip("link", "add", "name", name, "type", "bridge")
        made = True
    ip("link", "set", "dev", name, "mtu", str(mtu), "up")
    return made


def delete_link(name: str) -> bool:
    return ip("link", "del", "dev", name, check=False).returncode == 0


def delete_bridge_made(state_dir: Path, bridge: str) -> bool:
    """Remove ``bridge`` if the router made it (``state.take_bridge_made``,
    which forgets that it did); whether it went."""
    return take_bridge_made(state_dir, bridge) and delete_link(bridge)


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
