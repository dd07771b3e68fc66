"""The data plane: one OS thread that moves frames between the TAP and UDP.

Why a thread and not a trio task: measured on this project's 2-core VMs, a
trio task woken from idle by ``wait_readable`` starts running ~200 us after the
datagram arrived, a raw ``epoll`` loop ~110 us, and a packet crossing the mesh
is woken four times per round trip.  So the forwarder blocks in its own
``select.epoll`` on the TAP fd, the UDP socket and a wake pipe, drains each
until it would block, and never touches trio.  It lives inside the router's
nursery (``Router._forwarder_task`` runs it with ``trio.to_thread.run_sync``
and stops it through the wake pipe when cancelled).

Sharing with the trio thread (the control plane), under the GIL:

* Everything the forwarder reads from the router is replaced whole, never
  mutated in place where the forwarder iterates: ``peers`` and ``by_index``
  are dicts it only ``get``s from; ``routes`` is a fresh object after every
  topology change.
* Only this thread seals: DATA, relays and heartbeats, so a session's counter
  (the nonce) is only ever advanced here.
* It keeps its own counters; the router merges them into ``status()``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from .constants import ETH_HEADER, HEARTBEAT_INTERVAL
from .dataplane import (
    AD_SIZE,
    BROADCAST,
    FRAME_LEN,
    MAX_HOPS,
    ROUTE,
    VNET_HDR_LEN,
    DataSession,
    FramePacker,
    PacketType,
    gather_untrusted,
    iter_frames_untrusted,
    parse_header_untrusted,
    parse_route_untrusted,
)
from .errors import BadPacket
from .mactable import LOCAL, MacTable, is_multicast
from .udp import UdpSocket

if TYPE_CHECKING:
    from .router import Peer
    from .topology import Routes

log = logging.getLogger("meshrouter")

RECV_BUFFER = 1 << 17  # GRO hands over up to 64 KiB of coalesced datagrams
FRAME_BUFFER = 70_000  # a 64 KiB TSO superframe, its virtio header and our prefix
DRAIN_BATCH = 64  # reads of one fd before looking at the others
PROBE_INTERVAL = 60.0  # re-probe the path MTU for growth this often
# Frames read in one drain share messages of up to this many datagrams: one
# AEAD call and one GSO send for a burst of small frames (UDP, ACKs), while a
# lost datagram costs at most this many datagrams' worth of frames.
PACK_DATAGRAMS = 16
MAC_EXPIRY_INTERVAL = 10.0
ETH_AT = VNET_HDR_LEN  # where the Ethernet header starts in what the TAP gives us
PREFIX = ROUTE.size + FRAME_LEN.size  # route header and frame length before a lone frame
STOP = b"s"
KICK = b"k"


class Forwarder:
    def __init__(
        self,
        *,
        me: bytes,
        tap_fd: int,
        udp: UdpSocket,
        peers: dict[bytes, Peer],
        by_index: dict[int, Peer],
        routes: Callable[[], Routes],
        macs: MacTable,
        now: Callable[[], float],
        busy_poll: float = 0.0,
    ) -> None:
        self.me = me
        self.tap_fd = tap_fd
        self.udp = udp
        self.peers = peers
        self.by_index = by_index
        self.routes = routes
        self.macs = macs
        self.now = now
        self.busy_poll = busy_poll
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._packers: dict[tuple[bytes, bytes], FramePacker] = {}
        self._send_buf = bytearray(FRAME_BUFFER + 64 * 32)  # sealed datagrams, laid out for GSO
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)

    # -- control from the trio thread ---------------------------------------

    def kick(self) -> None:
        """Make the loop look at its timers now (e.g. a new peer wants a heartbeat)."""
        os.write(self._wake_w, KICK)

    def stop(self) -> None:
        os.write(self._wake_w, STOP)

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the loop --------------------------------------------------------

    def run(self) -> None:
        """Forward until ``stop()``.  Blocking: run it in a thread."""
        ep = select.epoll()
        udp_fd = self.udp.fileno()
        ep.register(self._wake_r, select.EPOLLIN)
        ep.register(udp_fd, select.EPOLLIN)
        if self.tap_fd >= 0:
            ep.register(self.tap_fd, select.EPOLLIN)
        recv_buf = bytearray(RECV_BUFFER)
        frame_buf = bytearray(FRAME_BUFFER)
        next_heartbeats = next_expiry = 0.0
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
                        self._drain_udp(recv_buf, now)
                    elif fd == self.tap_fd:
                        self._drain_tap(frame_buf, now)
                    else:
                        try:
                            if STOP in os.read(self._wake_r, 4096):
                                return
                        except BlockingIOError:
                            pass
                        next_heartbeats = 0.0
                if now >= next_heartbeats:
                    next_heartbeats = now + HEARTBEAT_INTERVAL / 2
                    self._heartbeats(now)
                if now >= next_expiry:
                    next_expiry = now + MAC_EXPIRY_INTERVAL
                    self.macs.expire(now)
        finally:
            ep.close()

    def _internal_error(self, where: str, exc: Exception) -> None:
        key = f"internal error in {where}: {type(exc).__name__}"
        if not self.counters[key]:
            log.error("%s (logged once; counted in 'mesh status --json')", key, exc_info=exc)
        self.counters[key] += 1

    # -- heartbeats ------------------------------------------------------

    def _heartbeats(self, now: float) -> None:
        for peer in list(self.peers.values()):
            session, addr = peer.session, peer.udp_addr
            if session is None or addr is None or now < peer.next_heartbeat:
                continue
            peer.next_heartbeat = now + HEARTBEAT_INTERVAL
            probe = now >= peer.next_probe or not session.pmtu_confirmed
            if now >= peer.next_probe:
                peer.next_probe = now + PROBE_INTERVAL
            for dgram in session.heartbeats(now, probe=probe):
                try:
                    self.udp.sock.sendto(dgram, addr)
                except OSError as exc:
                    self.drops["heartbeat send " + errno.errorcode.get(exc.errno or 0, "?")] += 1

    # -- receiving -------------------------------------------------------

    def _drain_udp(self, buf: bytearray, now: float) -> None:
        view = memoryview(buf)
        udp = self.udp
        for _ in range(DRAIN_BATCH):
            try:
                n, seg, addr = udp.recv(buf)
            except BlockingIOError:
                return
            except OSError:
                self.drops["udp_recv_error"] += 1
                continue
            if n == 0:
                self.drops["empty datagram"] += 1
            off = 0
            while off < n:
                try:
                    off = self._receive_run(buf, view, off, n, seg, addr, now)
                except BadPacket as exc:
                    self.drops[str(exc)] += 1
                    off += seg
                except Exception as exc:  # a bug: count it, keep forwarding
                    self._internal_error("udp receive", exc)
                    off += seg

    def _receive_run(
        self,
        buf: bytearray,
        view: memoryview,
        off: int,
        n: int,
        seg: int,
        addr: tuple[str, int],
        now: float,
    ) -> int:
        """Handle the datagram at ``off`` of a (maybe GRO-coalesced) read, and the
        rest of its message with it when all of it is there.  Returns where the
        next datagram starts.  Raises only BadPacket (the caller counts it)."""
        end = min(off + seg, n)
        ptype, index, counter, segno, nseg = parse_header_untrusted(view[off:end])
        peer = self.by_index.get(index)
        if peer is None:
            raise BadPacket("unknown receiver index")
        session = peer.session
        if session is None:
            raise BadPacket("session not ready (handshake still running)")
        length = end - off
        # Segments of this message that follow it in this read (GRO coalesces a
        # whole GSO send): take them in one go when their numbers run on.
        count = min(nseg - segno, -(-(n - off) // seg))
        bodies = (
            gather_untrusted(buf, off, min(off + count * seg, n), count, seg, segno)
            if count > 1
            else None
        )
        if bodies is not None:
            end = min(off + count * seg, n)
            plain = session.receive_run_untrusted(
                view[off : off + AD_SIZE], counter, segno, count, nseg, bodies, now
            )
        else:
            plain = session.receive_untrusted(view[off:end], counter, segno, nseg, now)
        if plain is None:
            return end  # more segments to come
        if peer.udp_addr != addr:  # authenticated: follow the peer's address (NAT)
            peer.udp_addr = (addr[0], addr[1])
        if ptype == PacketType.HEARTBEAT:
            session.on_heartbeat(plain, length, now)
        else:
            self._deliver(session, plain, now)
        return end

    def _deliver(self, session: DataSession, plain: memoryview, now: float) -> None:
        origin, dst, hops = parse_route_untrusted(plain)
        if origin == self.me:
            raise BadPacket("own frame came back")
        if dst != self.me:
            if hops == 0:
                raise BadPacket("hop limit reached")
            relay = bytearray(plain)
            relay[ROUTE.size - 1] = hops - 1
            routes = self.routes()
            if dst == BROADCAST:
                for child in routes.children(origin):
                    self._relay(child, relay)
            else:
                hop = routes.next_hop.get(dst)
                if hop is None:
                    raise BadPacket("no route to relay destination")
                self._relay(hop, relay)
                return
        tap_fd = self.tap_fd
        for frame in iter_frames_untrusted(plain, ROUTE.size):
            if len(frame) < ETH_AT + ETH_HEADER:
                raise BadPacket("runt frame")
            self.macs.learn(bytes(frame[ETH_AT + 6 : ETH_AT + 12]), origin, now)
            session.rx_frames += 1
            session.rx_bytes += len(frame) - ETH_AT
            if tap_fd >= 0:
                try:
                    os.write(tap_fd, frame)
                except BlockingIOError:
                    self.drops["tap_write_would_block"] += 1
                except OSError:
                    self.drops["tap_write_error"] += 1

    def _relay(self, hop: bytes, plain: bytearray) -> None:
        peer = self.peers.get(hop)
        if peer is None or peer.session is None or peer.udp_addr is None:
            self.drops["relay next hop not connected"] += 1
            return
        self.counters["messages_relayed"] += 1
        self._send_message(peer, bytes(plain))

    # -- sending ---------------------------------------------------------

    def _send_message(self, peer: Peer, plaintext: bytes | memoryview) -> None:
        """Seal one DATA message for ``peer`` and send its datagrams (GSO when several)."""
        session, addr = peer.session, peer.udp_addr
        assert session is not None
        assert addr is not None
        total, size = session.seal_into(PacketType.DATA, plaintext, self._send_buf)
        if self.udp.send(self._send_buf, total, size, addr) == errno.EMSGSIZE:
            session.path_too_small()
            log.warning(
                "path MTU to %s shrank: back to %d-byte datagrams, probing again",
                peer.label,
                session.datagram_size,
            )

    def _drain_tap(self, buf: bytearray, now: float) -> None:
        # Frames are read at offset PREFIX so that a large frame, which goes
        # alone, already has room for its route header and length in front.
        view = memoryview(buf)
        into = [view[PREFIX:]]
        routes = self.routes()
        dirty: set[tuple[bytes, bytes]] = set()
        for _ in range(DRAIN_BATCH):
            try:
                n = os.readv(self.tap_fd, into)
            except BlockingIOError:
                break
            if n < ETH_AT + ETH_HEADER:
                self.drops["tap_runt"] += 1
                continue
            try:
                self._route_frame(buf, view, n, now, routes, dirty)
            except Exception as exc:  # a bug: count it, keep forwarding
                self._internal_error("tap read", exc)
        for key in dirty:
            self._flush_packer(key)

    def _packer(self, hop: bytes, dst: bytes) -> FramePacker:
        key = (hop, dst)
        packer = self._packers.get(key)
        if packer is None:
            prefix = ROUTE.pack(self.me, dst, MAX_HOPS)
            packer = self._packers[key] = FramePacker(0, prefix)
        return packer

    def _route_frame(
        self,
        buf: bytearray,
        view: memoryview,
        n: int,
        now: float,
        routes: Routes,
        dirty: set[tuple[bytes, bytes]],
    ) -> None:
        """Send the frame just read from the TAP (at ``buf[PREFIX:PREFIX+n]``)
        towards where its destination MAC lives."""
        macs, me = self.macs, self.me
        frame = view[PREFIX : PREFIX + n]
        macs.learn(bytes(frame[ETH_AT + 6 : ETH_AT + 12]), LOCAL, now)
        dst_mac = frame[ETH_AT : ETH_AT + 6]
        owner = None if is_multicast(dst_mac) else macs.lookup(bytes(dst_mac), now)
        if owner == LOCAL:
            return  # the bridge delivers it; nothing for the mesh
        if owner is None:
            pairs = [(child, BROADCAST) for child in routes.children(me)]
        else:
            hop = routes.next_hop.get(owner)
            if hop is None:
                self.drops["no route to peer"] += 1
                return
            pairs = [(hop, owner)]
        for key in pairs:
            peer = self.peers.get(key[0])
            session = peer.session if peer is not None else None
            if peer is None or session is None:
                continue
            session.tx_frames += 1
            session.tx_bytes += n - ETH_AT
            packer = self._packer(*key)
            packer.limit = session.message_budget * PACK_DATAGRAMS
            if not packer.fits(n):
                self._flush_packer(key)
            if packer.fits(n):
                packer.add(frame)
                dirty.add(key)
            else:  # a large frame goes alone, in one message GSO sends as segments
                ROUTE.pack_into(buf, 0, me, key[1], MAX_HOPS)
                FRAME_LEN.pack_into(buf, ROUTE.size, n)
                self._send_message(peer, view[: PREFIX + n])  # sealed straight from the buffer

    def _flush_packer(self, key: tuple[bytes, bytes]) -> None:
        packer = self._packers.get(key)
        if packer is None or not len(packer):
            return
        peer = self.peers.get(key[0])
        if peer is None or peer.session is None or peer.udp_addr is None:
            self.drops["next hop not connected"] += packer.frames
            del self._packers[key]  # the peer is gone
            return
        self._send_message(peer, packer.take())
