"""Trusted links on the kernel's VXLAN (sans-IO), after Weave's fast datapath.

With ``--trusted-subnets``, a direct connection whose peer's underlay address
lies in a subnet this peer trusts, and whose peer says the same of us,
carries unicast frames between containers through the kernel: a VXLAN device
on the mesh bridge (UDP port 6784), with the MACs of that peer's containers
programmed as static entries towards its address.  Nothing is encrypted on
that path (the control connection still is), which is what trusting a
subnet means.

The rest stays on the router's encrypted "sleeve": broadcast and multicast
(the VXLAN device has no flood entry, so the bridge's copy to it is dropped
and only the router's copy travels: no duplicates), unknown MACs, untrusted
and relayed peers.  The TAP and VXLAN ports of the bridge are *isolated*
from each other, so a frame never crosses from one path to the other.

Health: each side sends the other a full-size probe frame every second
through the kernel path (a VXLAN datagram to the peer's port 6784, to the
MAC of the peer's VXLAN device) and reports over the control connection
whether the peer's probes arrive.  The kernel path is used while probes
arrive both ways; none for ``PROBE_TIMEOUT`` (UDP 6784 blocked, an MTU too
small for a full frame, the peer's device gone) moves the peer's MACs back
to the sleeve until probes flow again.

Wire formats::

    FASTPATH (control message)  version=1(u8) flags(u8) vxlan_mac(6)
        flags: 1 = we trust you, 2 = your probes reach us
    probe (Ethernet frame inside VXLAN, ethertype 0x88B5)
        dst(6) src(6) 0x88B5 "MESHPRB1" sender(6) seq(u32) zero padding
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshrouter.base.errors import BadPacket

VXLAN_PORT = 6784
VNI = 6784
PROBE_ETHERTYPE = 0x88B5
PROBE_MAGIC = b"MESHPRB1"
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 3.5
REPORT_INTERVAL = 5.0
TRUSTS, HEARS = 1, 2

_MSG = struct.Struct("!BB6s")
_VXLAN = struct.Struct("!II")
_PROBE = struct.Struct("!6s6sH8s6sI")


def encode_message(flags: int, mac: bytes) -> bytes:
    return _MSG.pack(1, flags, mac)


def decode_message_untrusted(payload: bytes) -> tuple[int, bytes]:
    try:
        version, flags, mac = _MSG.unpack(payload)
    except struct.error as exc:
        raise BadPacket(f"malformed FASTPATH message: {exc}") from exc
    if version != 1:
        raise BadPacket(f"FASTPATH message of unknown version {version}")
    return flags, mac


def encode_probe(dst: bytes, src: bytes, me: bytes, seq: int, size: int) -> bytes:
    """A VXLAN datagram (header and frame) carrying a probe of ``size`` frame bytes."""
    frame = _PROBE.pack(dst, src, PROBE_ETHERTYPE, PROBE_MAGIC, me, seq & 0xFFFFFFFF)
    return _VXLAN.pack(0x08000000, VNI << 8) + frame + bytes(max(0, size - len(frame)))


def decode_probe_untrusted(frame: bytes | memoryview) -> tuple[bytes, int]:
    """The sender and sequence number of a probe frame as received on the
    VXLAN device.  Raises only BadPacket."""
    try:
        _dst, _src, ethertype, magic, sender, seq = _PROBE.unpack_from(frame)
    except struct.error as exc:
        raise BadPacket(f"short probe frame: {exc}") from exc
    if ethertype != PROBE_ETHERTYPE or magic != PROBE_MAGIC:
        raise BadPacket("not a mesh probe")
    return bytes(sender), seq


@dataclass
class PeerPath:
    name: bytes
    ip: str
    trusted: bool  # by us
    they_trust: bool = False
    their_mac: bytes | None = None
    heard_at: float | None = None  # their last probe
    they_hear: bool = False
    up: bool = False
    failing: bool = False  # wanted, tried for a while, not up
    trying_since: float | None = None
    seq: int = 0
    reported: int = -1
    next_report: float = 0.0


@dataclass(frozen=True, slots=True)
class PathChange:
    name: bytes
    up: bool


@dataclass
class Work:
    """What the shell should do after a tick."""

    probes: list[tuple[str, bytes]] = field(default_factory=list)  # (ip, datagram)
    reports: list[tuple[bytes, bytes]] = field(default_factory=list)  # (peer, FASTPATH payload)
    changes: list[PathChange] = field(default_factory=list)


class FastPath:
    def __init__(
        self,
        me: bytes,
        mac: bytes,
        trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        probe_size: int,
    ) -> None:
        self.me = me
        self.mac = mac
        self.trusted = list(trusted)
        self.probe_size = probe_size
        self.peers: dict[bytes, PeerPath] = {}
        self.fdb: dict[bytes, bytes] = {}  # MAC -> peer, as programmed
        self.counters = {
            "probes_sent": 0,
            "probe_send_errors": 0,  # these two counted by the shell, which does the I/O
            "fdb_errors": 0,
            "probes_heard": 0,
            "bad_probes": 0,
            "switches": 0,
        }
        self._next_probe = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.trusted)

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in self.trusted)

    @property
    def family(self) -> int:
        """The IP version of the trusted subnets (4 when none): the VXLAN device's."""
        return self.trusted[0].version if self.trusted else 4

    # -- connections ----------------------------------------------------------

    def connection_up(self, name: bytes, ip: str) -> bytes:
        """A direct connection is established; the FASTPATH message to send it.
        A connection replacing one to the same address (a re-key) keeps its
        path's state: the kernel path does not depend on the control connection."""
        p = self.peers.get(name)
        if p is None or p.ip != ip:
            p = self.peers[name] = PeerPath(name, ip, self.trusts(ip))
        return self._flags_message(p)

    def connection_down(self, name: bytes) -> list[PathChange]:
        p = self.peers.pop(name, None)
        return [PathChange(name, False)] if p is not None and p.up else []

    def _flags(self, p: PeerPath, now: float | None = None) -> int:
        hears = p.heard_at is not None and (now is None or now - p.heard_at < PROBE_TIMEOUT)
        return (TRUSTS if p.trusted else 0) | (HEARS if hears else 0)

    def _flags_message(self, p: PeerPath) -> bytes:
        return encode_message(self._flags(p), self.mac)

    def on_message_untrusted(self, name: bytes, payload: bytes) -> None:
        flags, mac = decode_message_untrusted(payload)
        p = self.peers.get(name)
        if p is None:
            return
        p.they_trust = bool(flags & TRUSTS)
        p.they_hear = bool(flags & HEARS)
        p.their_mac = mac

    def on_probe_untrusted(self, frame: bytes | memoryview, now: float) -> None:
        try:
            sender, _seq = decode_probe_untrusted(frame)
        except BadPacket:
            self.counters["bad_probes"] += 1
            raise
        p = self.peers.get(sender)
        if p is None or not p.trusted:
            self.counters["bad_probes"] += 1
            raise BadPacket("probe from a peer we have no trusted connection with")
        p.heard_at = now
        self.counters["probes_heard"] += 1

    def path_of(self, name: bytes) -> str:
        """ "kernel"; "fallback" (trusted both ways, but probes do not get
        through: the router carries it); or "sleeve" (the router)."""
        p = self.peers.get(name)
        if p is None:
            return "sleeve"
        return "kernel" if p.up else "fallback" if p.failing else "sleeve"

    def wants_probes(self, p: PeerPath) -> bool:
        return p.trusted and p.they_trust and p.their_mac is not None

    # -- time ----------------------------------------------------------------------

    def tick(self, now: float) -> Work:
        work = Work()
        probe_now = now >= self._next_probe
        if probe_now:
            self._next_probe = now + PROBE_INTERVAL
        for p in self.peers.values():
            if probe_now and self.wants_probes(p):
                assert p.their_mac is not None
                p.seq += 1
                work.probes.append(
                    (p.ip, encode_probe(p.their_mac, self.mac, self.me, p.seq, self.probe_size))
                )
                self.counters["probes_sent"] += 1
            flags = self._flags(p, now)
            if flags != p.reported or now >= p.next_report:
                p.reported, p.next_report = flags, now + REPORT_INTERVAL
                work.reports.append((p.name, encode_message(flags, self.mac)))
            wanted = self.wants_probes(p)
            up = wanted and bool(flags & HEARS) and p.they_hear
            if not wanted:
                p.trying_since = None
            elif p.trying_since is None:
                p.trying_since = now
            since = p.trying_since
            p.failing = since is not None and not up and now - since >= PROBE_TIMEOUT
            if up != p.up:
                p.up = up
                self.counters["switches"] += 1
                work.changes.append(PathChange(p.name, up))
        return work

    # -- forwarding entries ----------------------------------------------------------

    def plan_fdb(self, macs: Mapping[bytes, bytes]) -> tuple[dict[bytes, str], list[bytes]]:
        """From the router's MAC table (MAC -> peer, b"" for local), the
        entries to program (MAC -> peer address) and the MACs to remove.

        An entry stays after the MAC ages out of the router's table (its
        frames no longer pass the router once they take the kernel path); it
        goes when the MAC shows up elsewhere or its peer's path goes down."""
        add: dict[bytes, str] = {}
        remove: list[bytes] = []
        for mac, peer in macs.items():
            p = self.peers.get(peer)
            if p is not None and p.up:
                if self.fdb.get(mac) != peer:
                    self.fdb[mac] = peer
                    add[mac] = p.ip
            elif mac in self.fdb:
                del self.fdb[mac]
                remove.append(mac)
        for mac, peer in list(self.fdb.items()):
            p = self.peers.get(peer)
            if p is None or not p.up:
                del self.fdb[mac]
                remove.append(mac)
        return add, remove

    def status(self) -> dict[str, int]:
        return {**self.counters, "kernel_macs": len(self.fdb)}
