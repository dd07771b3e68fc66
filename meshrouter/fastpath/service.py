"""The trio side of the kernel fast path (``fastpath``): the VXLAN device on
the bridge, the probe sockets, and the forwarding entries (``fdb``) that
follow the data plane's MAC table and each peer's path."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from meshrouter.base.errors import BadPacket
from meshrouter.dataplane.forwarder import MacView
from meshrouter.dataplane.udp import IPV6_DONTFRAG, IPV6_MTU_DISCOVER
from meshrouter.fastpath.core import PROBE_ETHERTYPE, VNI, VXLAN_PORT, FastPath
from meshrouter.fastpath.fdb import FdbWriter
from meshrouter.host import netdev

log = logging.getLogger("meshrouter.fastpath")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_PMTUDISC_DO = 2
REPLAN_INTERVAL = 0.5


def probe_filter() -> tuple[bytes, ctypes.Array[ctypes.c_char]]:
    """A classic BPF program keeping only probe frames (ethertype 0x88B5), so
    the data frames the kernel path carries never wake the router."""
    insns = b"".join(
        struct.pack("=HBBI", *i)
        for i in (
            (0x28, 0, 0, 12),  # ldh [12]
            (0x15, 0, 1, PROBE_ETHERTYPE),  # jeq #0x88b5, keep, drop
            (0x06, 0, 0, 0xFFFF),  # ret keep
            (0x06, 0, 0, 0),  # ret drop
        )
    )
    buf = ctypes.create_string_buffer(insns, len(insns))
    return struct.pack("HL", 4, ctypes.addressof(buf)), buf


class FastPathService:
    def __init__(
        self, core: FastPath, *, bridge: str, tap: str, device: str, macs: Callable[[], MacView]
    ) -> None:
        self.core = core
        self.bridge = bridge
        self.tap = tap
        self.device = device
        self.macs = macs
        self._fdb: FdbWriter | None = None
        self._tx: socket.socket | None = None
        self._rx: socket.socket | None = None
        self._seen_version = -2
        self._replan = True

    # -- the device --------------------------------------------------------

    def up(self) -> None:
        """Make the VXLAN device on the bridge, isolated from the TAP; open the
        probe sockets and the netlink socket.  Raises NetdevError."""
        if netdev.link_exists(self.device):  # left by a router killed with -9
            netdev.ip("link", "del", self.device)
        v6 = self.core.family == 6  # an IPv6 device ('local ::') takes IPv6 peers only
        netdev.ip(
            "link", "add", self.device, "type", "vxlan", "id", str(VNI),
            "dstport", str(VXLAN_PORT), "nolearning", *(["local", "::"] if v6 else []),
        )  # fmt: skip
        netdev.ip("link", "set", self.device, "master", self.bridge)
        netdev.ip("link", "set", self.device, "up")
        netdev.bridge("link", "set", "dev", self.device, "isolated", "on", "learning", "off")
        netdev.bridge("link", "set", "dev", self.tap, "isolated", "on")
        mac = Path(f"/sys/class/net/{self.device}/address").read_text().strip()
        self.core.mac = bytes.fromhex(mac.replace(":", ""))
        self._fdb = FdbWriter(self.device, self.bridge)
        # Probes go as the device's frames do: full size, or not at all.
        if v6:
            tx = self._tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            tx.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            tx.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        else:
            tx = self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        tx.setblocking(False)
        rx = self._rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        prog, _keep = probe_filter()
        rx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        rx.bind((self.device, ETH_P_ALL))
        rx.setblocking(False)
        log.info(
            "kernel fast path ready on %s (VXLAN port %d) for trusted subnets %s",
            self.device,
            VXLAN_PORT,
            ", ".join(map(str, self.core.trusted)),
        )

    def down(self) -> None:
        for s in (self._tx, self._rx):
            if s is not None:
                s.close()
        if self._fdb is not None:
            self._fdb.close()
        netdev.ip("link", "del", self.device, check=False)
        netdev.bridge("link", "set", "dev", self.tap, "isolated", "off", check=False)

    # -- the loops ----------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._rx is not None
        rx = self._rx
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._replan_loop)
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(rx)
                now = trio.current_time()
                while True:
                    try:
                        frame = rx.recv(2048)
                    except BlockingIOError:
                        break
                    with contextlib.suppress(BadPacket):  # counted by the core
                        self.core.on_probe_untrusted(frame, now)

    def send_probes(self, probes: list[tuple[str, bytes]]) -> None:
        if self._tx is None:
            return
        for addr, datagram in probes:
            try:
                self._tx.sendto(datagram, (addr, VXLAN_PORT))
            except OSError:  # blocked, or no route: the missing probes tell the peer
                self.core.counters["probe_send_errors"] += 1

    def path_changed(self) -> None:
        self._replan = True

    async def _replan_loop(self) -> None:
        while True:
            view = self.macs()
            if self._replan or view.version != self._seen_version:
                self._replan = False
                self._seen_version = view.version
                self._program(view)
            await trio.sleep(REPLAN_INTERVAL)

    def _program(self, view: MacView) -> None:
        add, remove = self.core.plan_fdb(view.owners)
        assert self._fdb is not None
        for mac in remove:
            try:
                self._fdb.remove(mac)
            except OSError as exc:
                self.core.counters["fdb_errors"] += 1
                log.warning("cannot remove the kernel path's entry for a MAC: %s", exc)
        for mac, addr in add.items():
            try:
                self._fdb.add(mac, addr)
            except OSError as exc:
                self.core.counters["fdb_errors"] += 1
                log.warning("cannot program the kernel path's entry for a MAC: %s", exc)
