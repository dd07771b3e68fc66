"""The data plane: one OS thread that moves frames between the TAP and UDP.

Why a thread and not a trio task: measured on this project's 2-core VMs, a
trio task woken from idle by ``wait_readable`` starts running ~200 us after the
datagram arrived, a raw ``epoll`` loop ~110 us, and a packet crossing the mesh
is woken four times per round trip.  So the forwarder blocks in its own
``select.epoll`` on the TAP fd, the UDP socket and a wake pipe, drains each
until it would block, and never touches trio.  The router runs it inside its
nursery with ``trio.to_thread.run_sync`` and stops it through the wake pipe.

What it shares with the control plane is typed in ``link`` (links, routes and
its counters, one writer each); the frame's path is told in ``send`` (TAP to
UDP) and ``receive`` (UDP to TAP).  Here: the loop, heartbeats and probes,
MAC expiry, and ``statistics()``.
"""

from __future__ import annotations

import errno
import os
import select
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from meshrouter.base.constants import HEARTBEAT_INTERVAL
from meshrouter.dataplane.link import LinkView, PlaneStats
from meshrouter.dataplane.mactable import MacTable
from meshrouter.dataplane.pmtu import SAFE_DATAGRAM
from meshrouter.dataplane.receive import Receiver
from meshrouter.dataplane.send import Sender
from meshrouter.dataplane.sessionstate import Mode, native, use_native
from meshrouter.dataplane.udp import UdpSocket, send_error

PROBE_INTERVAL = 60.0  # re-probe the path MTU for growth this often
MAC_EXPIRY_INTERVAL = 10.0
STOP = b"s"
KICK = b"k"


# What the Python loop's Coalescer counts, in its counts() order.
_JOINER_COUNTS = (
    "superframes_joined",
    "segments_joined",
    "tap_write_would_block",
    "tap_write_error",
)


@dataclass(frozen=True, slots=True)
class MacView:
    """Where each MAC lives, as the data plane's table said at one moment:
    published whole by the forwarder's thread, read by the control plane
    (the kernel fast path's forwarding entries follow it)."""

    version: int
    owners: dict[bytes, bytes]  # never changed after publication


@dataclass(frozen=True, slots=True)
class ForwarderStatistics:
    macs: int
    drops: dict[str, int]
    counters: dict[str, int]


class Forwarder:
    def __init__(
        self,
        *,
        me: bytes,
        tap_fd: int,
        udp: UdpSocket,
        links: LinkView,
        now: Callable[[], float],
        busy_poll: float = 0.0,
        dataplane: Mode = "auto",
        join: bool = True,
    ) -> None:
        """``join``: in-order TCP segments are joined into superframes for the
        TAP (its offloads are on); else each is written as it came."""
        self.me = me
        self.tap_fd = tap_fd
        self.udp = udp
        self.links = links
        self.now = now
        self.busy_poll = busy_poll
        self.publish_macs = False  # set by the control plane before run(): fast path on
        self.macs = MacTable()  # the forwarder's own
        self.mac_view = MacView(-1, {})  # written by the forwarder's thread only
        self.stats = PlaneStats()
        self.sender = Sender(
            me=me, tap_fd=tap_fd, udp=udp, links=links, macs=self.macs, stats=self.stats
        )
        self.receiver = Receiver(
            me=me,
            tap_fd=tap_fd,
            udp_fd=udp.fileno(),
            links=links,
            macs=self.macs,
            stats=self.stats,
            sender=self.sender,
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.cloop: native.Loop | None = None
        if use_native(dataplane):
            # The C loop reads into the same buffers the Python paths take
            # over from: a frame or datagram handed back is not copied.
            self.cloop = native.Loop(
                tap_fd,
                udp.fileno(),
                self._wake_r,
                me,
                self.sender.frame_buffer,
                self.receiver.recv_buffer,
                self.receiver.plain_buffer,
                self.receiver.name_buffer,
                udp.gso,
                busy_poll,
                join,
            )
            self.sender.cloop = self.receiver.cloop = self.cloop
            links.subscribe(self.cloop.invalidate)
        elif native is not None and tap_fd >= 0 and join:
            # The Python loop with the extension built: segments are joined in
            # C on their way to the TAP, as the C loop joins them.
            self.receiver.joiner = native.Coalescer(tap_fd)
        self._macs_version = self.macs.version
        self._next_heartbeats = self._next_expiry = 0.0
        # 'mesh ping': asked by the control plane (deque: appended there,
        # taken here), answered here; results read there (one dict write each).
        self._pings: deque[tuple[bytes, bytes]] = deque()
        self._ping_sent: dict[bytes, float] = {}
        self.pongs: dict[bytes, float] = {}

    @property
    def dataplane(self) -> str:
        """Which loop forwards: "c" or "python"."""
        return "python" if self.cloop is None else "c"

    @property
    def gso(self) -> bool:
        """Whether UDP GSO still works (both loops fall back for good if not)."""
        return self.udp.gso and (self.cloop is None or bool(self.cloop.gso))

    @property
    def gso_sends(self) -> int:
        n = self.udp.gso_sends
        if self.cloop is not None:
            n += self.cloop.counts()[native.COUNTS.index("c_gso_sends")]
        return n

    # -- entries for the control plane (any thread) ----------------------

    def kick(self) -> None:
        """Make the loop look at its timers now (e.g. a new link wants a heartbeat)."""
        os.write(self._wake_w, KICK)

    def stop(self) -> None:
        os.write(self._wake_w, STOP)

    def ping(self, peer: bytes, token: bytes) -> None:
        """Send ``peer`` a ping over its link's encrypted UDP path; the answer
        shows in ``pongs`` (token -> round trip, seconds)."""
        self._pings.append((peer, token))
        self.kick()

    def close(self) -> None:
        if self.cloop is not None:
            self.cloop.release()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def statistics(self) -> ForwarderStatistics:
        """Copies of the data plane's counters, safe to take from another thread:
        its own drops and the UDP socket's send errors (both written here)."""
        drops, counters = self.stats.snapshot()
        for reason, n in dict(self.udp.errors).items():  # dict(): one copy made in C
            drops[reason] = drops.get(reason, 0) + n
        if self.cloop is not None:  # its counters: racy reads of C integers, never torn
            for name, n in zip(native.COUNTS, self.cloop.counts(), strict=True):
                if not n:
                    continue
                if name.startswith("c_"):
                    counters[name[2:]] = counters.get(name[2:], 0) + n
                else:
                    drops[name] = drops.get(name, 0) + n
            for code, n in self.cloop.send_errors().items():
                reason = send_error(code)
                drops[reason] = drops.get(reason, 0) + n
        joiner = self.receiver.joiner
        if joiner is not None:
            for name, n in zip(_JOINER_COUNTS, joiner.counts(), strict=True):
                if n:
                    into = drops if name.startswith("tap_") else counters
                    into[name] = into.get(name, 0) + n
        return ForwarderStatistics(len(self.macs), drops, counters)

    # -- entries for tests and benchmarks (the forwarder's thread, or none) -

    def drain_tap(self, now: float) -> None:
        """Forward what waits on the TAP (``send``)."""
        self.sender.drain_tap(now)

    def drain_udp(self, now: float) -> None:
        """Forward what waits on the UDP socket (``receive``)."""
        self.receiver.drain_udp(now)

    def pump(self, now: float) -> None:
        """Forward everything that waits, with whichever loop runs (tests)."""
        if self.cloop is None:
            self.drain_udp(now)
            self.drain_tap(now)
            return
        while self._step(self.cloop, now, 0.0) != native.EV_TIMEOUT:
            pass

    # -- the loop --------------------------------------------------------

    def run(self) -> None:
        """Forward until ``stop()``.  Blocking: run it in a thread."""
        if self.cloop is not None:
            self._run_native(self.cloop)
            return
        ep = select.epoll()
        udp_fd = self.receiver.udp_fd
        ep.register(self._wake_r, select.EPOLLIN)
        ep.register(udp_fd, select.EPOLLIN)
        if self.tap_fd >= 0:
            ep.register(self.tap_fd, select.EPOLLIN)
        drain_udp, drain_tap = self.receiver.drain_udp, self.sender.drain_tap
        busy_until = 0.0
        spin = self.busy_poll
        try:
            while True:
                if spin and self.now() < busy_until:
                    # Just busy: poll without sleeping for a moment, because a
                    # reply is likely and a woken-from-idle thread starts late.
                    events = ep.poll(0)
                    if not events:
                        os.sched_yield()
                        continue
                else:
                    events = ep.poll(HEARTBEAT_INTERVAL / 4)
                now = self.now()
                if events and spin:
                    busy_until = now + spin
                for fd, _ in events:
                    if fd == udp_fd:
                        drain_udp(now)
                    elif fd == self.tap_fd:
                        drain_tap(now)
                    elif self._woken():
                        return
                self._timers(now)
        finally:
            ep.close()

    def _run_native(self, loop: native.Loop) -> None:
        """The C loop forwards; Python handles what it hands back, and the timers."""
        now = self.now()
        while True:
            ev = self._step(loop, now, HEARTBEAT_INTERVAL / 4)
            now = self.now()
            if ev == native.EV_WAKE and self._woken():
                return
            self._timers(now)

    def _woken(self) -> bool:
        """Read the wake pipe: True if asked to stop; a kick makes heartbeats due."""
        try:
            if STOP in os.read(self._wake_r, 4096):
                return True
        except BlockingIOError:
            pass
        self._next_heartbeats = 0.0
        return False

    def _timers(self, now: float) -> None:
        """Heartbeats and MAC expiry when due; the MAC table's news to whoever
        follows it; pings asked for and pings to answer."""
        if self._pings or self.receiver.pinged:
            self._answer_pings(now)
        if now >= self._next_heartbeats:
            self._next_heartbeats = now + HEARTBEAT_INTERVAL / 2
            self.heartbeats(now)
        if now >= self._next_expiry:
            self._next_expiry = now + MAC_EXPIRY_INTERVAL
            self.macs.expire(now)
        if self.publish_macs and self.mac_view.version != self.macs.version:
            self.mac_view = MacView(self.macs.version, self.macs.owners())

    def _follow_macs(self) -> None:
        """The C loop's lanes and seen MACs were decided on the MAC table: when it
        changed, they go."""
        if self.cloop is not None and self._macs_version != self.macs.version:
            self._macs_version = self.macs.version
            self.cloop.invalidate()

    def _step(self, loop: native.Loop, now: float, timeout: float) -> int:
        """Run the C loop until it hands something back (or ``timeout``), and
        handle that with the Python paths.  Returns the event."""
        self._follow_macs()  # never on lanes decided on an older MAC table
        ev = loop.run(now, timeout)
        if ev == native.EV_TIMEOUT or ev == native.EV_WAKE:
            return ev
        now = self.now()
        if ev == native.EV_TAP:
            self.sender.route_frame(loop.ev_n, bool(loop.ev_first), now)
        elif ev == native.EV_TAP_DONE:
            self.sender.flush_packed()
        elif ev == native.EV_UDP:
            self.receiver.finish_read(loop.ev_off, loop.ev_n, loop.ev_seg, now)
        elif ev == native.EV_PLAIN:
            receiver = self.receiver
            receiver.take_opened(loop.ev_index, loop.ev_type, loop.ev_len, loop.ev_dlen, now)
            receiver.finish_read(loop.ev_next, loop.ev_n, loop.ev_seg, now)
        elif ev == native.EV_TOO_SMALL:
            link = self.links.by_name.get(loop.ev_hop)
            if link is not None:
                self.sender.path_too_small(link)
        return ev

    def _answer_pings(self, now: float) -> None:
        while self._pings:
            peer, token = self._pings.popleft()
            link = self.links.by_name.get(peer)
            if link is not None and link.udp_addr is not None:
                self._ping_sent[token] = now
                self._send_heartbeats(link.session.ping(token), link.udp_addr, now)
        pinged, self.receiver.pinged = self.receiver.pinged, []
        for link in pinged:
            session, addr = link.session, link.udp_addr
            due, session.pongs_due = session.pongs_due, []
            if addr is not None:
                for token in due:
                    self._send_heartbeats(session.ping(token, pong=True), addr, now)
            heard, session.pongs_heard = session.pongs_heard, []
            for token, at in heard:
                sent = self._ping_sent.pop(token, None)
                if sent is not None:
                    self.pongs[token] = at - sent
        if len(self._ping_sent) > 64:  # answers that never came
            self._ping_sent.clear()
        if len(self.pongs) > 64:
            self.pongs.clear()

    def _send_heartbeats(self, dgrams: list[bytes], addr: tuple[str, int], now: float) -> None:
        for dgram in dgrams:
            try:
                self.udp.sendto(dgram, addr)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE and len(dgram) > SAFE_DATAGRAM:
                    # A probe larger than our own link takes (1472 bytes over
                    # IPv6's 48 bytes of headers on a 1500 link): an answer, not a loss.
                    self.stats.counters["probes_larger_than_link"] += 1
                    continue
                self.stats.drops["heartbeat_send_failed"] += 1
                self.stats.detail("heartbeat_send_failed", str(exc), now)

    def heartbeats(self, now: float) -> None:
        """Send each link's heartbeat when due, with path-MTU probes when due."""
        for link in list(self.links.by_name.values()):
            addr, session = link.udp_addr, link.session
            punch = link.punch_to
            if punch is not None and punch != addr and not session.hears_peer(now):
                # Nothing heard: where the peer's NAT maps it now (its gossip
                # says), so that our datagrams open our NAT to it (hole punching).
                link.udp_addr = addr = punch
            if addr is None or now < link.next_heartbeat:
                continue
            link.next_heartbeat = now + HEARTBEAT_INTERVAL
            probe = now >= link.next_probe or session.pmtu.wants_probe()
            if now >= link.next_probe:
                link.next_probe = now + PROBE_INTERVAL
            self._send_heartbeats(session.heartbeats(now, probe=probe), addr, now)
