"""Host network devices: the bridge and the TAP device (thin wrappers over ``ip``/pytun)."""

from __future__ import annotations

import os
import subprocess

import pytun

from .errors import MeshError


class NetdevError(MeshError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = proc.stderr.strip() or proc.stdout.strip()
        raise NetdevError(f"'ip {' '.join(args)}' failed: {msg}")
    return proc


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


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


class Tap:
    """A TAP device on the bridge, opened non-blocking.  Goes away when closed."""

    def __init__(self, name: str, bridge: str, mtu: int) -> None:
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            raise NetdevError(f"cannot open TAP device {name!r}: {exc}") from exc
        self.name: str = self._dev.name
        self.fd: int = self._dev.fileno()
        os.set_blocking(self.fd, False)
        self._dev.persist(False)
        ip("link", "set", "dev", self.name, "mtu", str(mtu))
        ip("link", "set", "dev", self.name, "master", bridge)
        ip("link", "set", "dev", self.name, "up")

    def close(self) -> None:
        self._dev.close()
