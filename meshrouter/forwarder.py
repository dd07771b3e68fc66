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
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import libc
from .constants import ETH_HEADER, HEARTBEAT_INTERVAL
from .crypto import buffer_ptr
from .dataplane import (
    AD_SIZE,
    BROADCAST,
    HEADER,
    MAX_HOPS,
    ROUTE,
    ROUTE_AND_LEN,
    SEND_BUFFER,
    VNET_HDR_LEN,
    DataSession,
    FramePacker,
    PacketType,
    SendBuffer,
    compact_untrusted,
    iter_frames_untrusted,
    parse_header_untrusted,
    parse_route_untrusted,
)
from .errors import BadPacket
from .mactable import LOCAL, MacTable
from .udp import SOL_UDP, UDP_GRO, UdpSocket

if TYPE_CHECKING:
    from .router import Peer
    from .topology import Routes

log = logging.getLogger("meshrouter")

RECV_BUFFER = 1 << 17  # GRO hands over up to 64 KiB of coalesced datagrams
FRAME_BUFFER = 70_000  # a 64 KiB TSO superframe, its virtio header and our prefix
PLAIN_BUFFER = SEND_BUFFER  # the largest message's plaintext fits
DRAIN_BATCH = 64  # reads of one fd before looking at the others
PROBE_INTERVAL = 60.0  # re-probe the path MTU for growth this often
# Frames read in one drain share messages of up to this many datagrams: one
# AEAD call and one GSO send for a burst of small frames (UDP, ACKs), while a
# lost datagram costs at most this many datagrams' worth of frames.
PACK_DATAGRAMS = 16
MAC_EXPIRY_INTERVAL = 10.0
LANE_RELEARN = 1.0  # a lane refreshes its source MAC in the table this often
MAX_LANES = 4096
ETH_AT = VNET_HDR_LEN  # where the Ethernet header starts in what the TAP gives us
PREFIX = ROUTE_AND_LEN.size  # route header and frame length before a lone frame
SRC_AT = ETH_AT + 6  # source MAC in what the TAP gives us
MIN_FRAME = ETH_AT + ETH_HEADER
STOP = b"s"
KICK = b"k"


class HasRoutes(Protocol):
    """What the forwarder routes by: the router, whose ``routes`` is replaced
    whole (never changed in place) after every topology change."""

    routes: Routes


class _Lane:
    """Where frames to one destination MAC go, while nothing that decided it
    changes: the routes (a new object after any topology change), the MAC
    table (its version), the session towards the next hop, the source MAC.
    Such a frame skips MAC learning and lookup, routing and packing: the
    per-frame Python on this path is what a small frame's latency is made of."""

    __slots__ = (
        "alone_above",
        "dst",
        "learned_at",
        "macs_version",
        "peer",
        "routes",
        "session",
        "src",
    )

    def __init__(
        self,
        peer: Peer,
        session: DataSession,
        dst: bytes,
        src: bytes,
        routes: Routes,
        macs_version: int,
        alone_above: int,
        learned_at: float,
    ) -> None:
        self.peer = peer
        self.session = session
        self.dst = dst  # the peer the destination MAC lives at
        self.src = src
        self.routes = routes
        self.macs_version = macs_version
        self.alone_above = alone_above  # larger frames are never packed
        self.learned_at = learned_at


class Forwarder:
    def __init__(
        self,
        *,
        me: bytes,
        tap_fd: int,
        udp: UdpSocket,
        peers: dict[bytes, Peer],
        by_index: dict[int, Peer],
        topology: HasRoutes,
        macs: MacTable,
        now: Callable[[], float],
        busy_poll: float = 0.0,
    ) -> None:
        self.me = me
        self.tap_fd = tap_fd
        self.udp = udp
        self._udp_fd = udp.fileno()
        self.peers = peers
        self.by_index = by_index
        self.topology = topology
        self.macs = macs
        self.now = now
        self.busy_poll = busy_poll
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._packers: dict[tuple[bytes, bytes], FramePacker] = {}
        self._lanes: dict[bytes, _Lane] = {}  # by destination MAC
        self._wrote_tap = False  # a UDP read led to TAP writes (see _drain_udp)
        # Buffers reused for every frame, with their C pointers made once.
        self._out = SendBuffer()  # sealed datagrams, laid out for GSO
        self._frame = bytearray(FRAME_BUFFER)  # what the TAP gives, at PREFIX
        self._frame_ptr = buffer_ptr(self._frame)
        self._tap_into = self._frame_ptr + PREFIX
        self._frame_view = memoryview(self._frame)
        self._recv = bytearray(RECV_BUFFER)  # what UDP gives
        self._recv_ptr = buffer_ptr(self._recv)
        self._recv_arr = np.frombuffer(self._recv, np.uint8)
        self._recv_view = memoryview(self._recv)
        self._rm = libc.RecvMsg(self._recv)  # recvmsg's arguments, made once
        self._src_raw = b""  # port and address of the last authentic sender, raw
        self._src: tuple[str, int] = ("", 0)  # ... and as a tuple
        self._ct = bytearray(PLAIN_BUFFER)  # a message's ciphertext, put back together
        self._ct_ptr = buffer_ptr(self._ct)
        self._ct_arr = np.frombuffer(self._ct, np.uint8)
        self._plain = bytearray(PLAIN_BUFFER)  # the plaintext of the message just opened
        self._plain_ptr = buffer_ptr(self._plain)
        self._plain_view = memoryview(self._plain)
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
        udp_fd = self._udp_fd
        ep.register(self._wake_r, select.EPOLLIN)
        ep.register(udp_fd, select.EPOLLIN)
        if self.tap_fd >= 0:
            ep.register(self.tap_fd, select.EPOLLIN)
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
                        self._drain_udp(now)
                    elif fd == self.tap_fd:
                        self._drain_tap(now)
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

    def _drain_udp(self, now: float) -> None:
        fd, rm, recvmsg = self._udp_fd, self._rm, libc.recvmsg
        msg = rm.msg
        for _ in range(DRAIN_BATCH):
            msg.msg_namelen = libc.NAME_SIZE
            msg.msg_controllen = libc.CONTROL_SIZE
            n = recvmsg(fd, msg, 0)
            if n < 0:
                if libc.errno() not in (errno.EAGAIN, errno.EINTR):
                    self.drops["udp_recv_error"] += 1
                return
            seg = (rm.control_int(SOL_UDP, UDP_GRO) or n) if msg.msg_controllen else n
            if n == 0:
                self.drops["empty datagram"] += 1
            off = 0
            self._wrote_tap = False
            while off < n:
                try:
                    off = self._receive_run(off, n, seg, now)
                except BadPacket as exc:
                    self.drops[str(exc)] += 1
                    off += seg
                except Exception as exc:  # a bug: count it, keep forwarding
                    self._internal_error("udp receive", exc)
                    off += seg
            if self._wrote_tap:
                # What we just wrote was handled by the kernel inside write():
                # a reply (a pong, an ACK) may already wait on the TAP.  Send it
                # now rather than after the read that finds UDP empty and a
                # trip through epoll.
                self._drain_tap(now)

    def _receive_run(self, off: int, n: int, seg: int, now: float) -> int:
        """Handle the datagram at ``off`` of a (maybe GRO-coalesced) read, and the
        rest of its message with it when all of it is there.  Returns where the
        next datagram starts.  Raises only BadPacket (the caller counts it)."""
        end = off + seg if off + seg < n else n
        ptype, index, counter, segno, nseg = parse_header_untrusted(self._recv, off, end)
        peer = self.by_index.get(index)
        if peer is None:
            raise BadPacket("unknown receiver index")
        session = peer.session
        if session is None:
            raise BadPacket("session not ready (handshake still running)")
        length = end - off
        if nseg == 1:  # most messages: opened where they lie
            size = session.open_at_untrusted(
                self._recv_ptr + off,
                counter,
                self._recv_ptr + off + HEADER.size,
                length - HEADER.size,
                1,
                now,
                self._plain_ptr,
            )
            plain = self._plain_view[:size]
        else:
            # Segments of this message that follow it in this read (GRO coalesces
            # a whole GSO send): put back together with one copy, when in order.
            count = min(nseg - segno, -(-(n - off) // seg))
            stop = off + count * seg if off + count * seg < n else n
            copied = -1
            if count > 1:
                copied = compact_untrusted(
                    self._recv_arr, off, stop, count, seg, segno, counter, self._ct_arr
                )
            if copied >= 0 and count == nseg:  # the whole message
                end = stop
                size = session.open_at_untrusted(
                    self._recv_ptr + off, counter, self._ct_ptr, copied, nseg, now, self._plain_ptr
                )
                plain = self._plain_view[:size]
            else:  # part of it: the session keeps the parts until it is whole
                view = self._recv_view
                if copied >= 0:
                    end = stop
                    got = session.receive_run_untrusted(
                        view[off : off + AD_SIZE],
                        counter,
                        segno,
                        count,
                        nseg,
                        bytes(self._ct[:copied]),
                        now,
                    )
                else:
                    got = session.receive_untrusted(view[off:end], counter, segno, nseg, now)
                if got is None:
                    return end  # more segments to come
                plain = got
        # Authentic: follow the peer's address if it moved (NAT).
        if self._rm.name[2:8] != self._src_raw:
            self._src_raw = bytes(self._rm.name[2:8])
            self._src = self._rm.address()
        if peer.udp_addr != self._src:
            peer.udp_addr = self._src
        if ptype == PacketType.HEARTBEAT:
            session.on_heartbeat(plain, length, now)
        else:
            self._deliver(session, plain, now)
        return end

    def _deliver(self, session: DataSession, plain: memoryview, now: float) -> None:
        origin, dst, hops, size = parse_route_untrusted(plain)
        end = len(plain)
        if origin == self.me:
            raise BadPacket("own frame came back")
        if dst != self.me:
            if hops == 0:
                raise BadPacket("hop limit reached")
            relay = bytearray(plain)
            relay[ROUTE.size - 1] = hops - 1
            routes = self.topology.routes
            if dst == BROADCAST:
                for child in routes.children(origin):
                    self._relay(child, relay)
            else:
                hop = routes.next_hop.get(dst)
                if hop is None:
                    raise BadPacket("no route to relay destination")
                self._relay(hop, relay)
                return
        # One frame (the common case) or several, each len(4) || virtio_net_hdr || frame.
        lone = PREFIX + size == end
        frames = (plain[PREFIX:],) if lone else iter_frames_untrusted(plain, ROUTE.size)
        tap_fd, learn = self.tap_fd, self.macs.learn
        for frame in frames:
            if len(frame) < MIN_FRAME:
                raise BadPacket("runt frame")
            learn(frame[SRC_AT : SRC_AT + 6].tobytes(), origin, now)
            session.rx_frames += 1
            session.rx_bytes += len(frame) - ETH_AT
            if tap_fd >= 0:
                self._wrote_tap = True
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
        self._send(peer, peer.session.seal_into(PacketType.DATA, plain, self._out))

    # -- sending ---------------------------------------------------------

    def _send(self, peer: Peer, sealed: tuple[int, int]) -> None:
        """Send the datagrams just sealed into ``self._out`` (GSO when several)."""
        addr = peer.udp_addr
        assert addr is not None
        total, size = sealed
        if total <= size:  # one datagram, the common case: no detour
            try:
                self.udp.sock.sendto(self._out.view[:total], addr)
            except OSError:
                pass  # udp.send tries again, and counts and classifies the failure
            else:
                self.udp.plain_sends += 1
                return
        if self.udp.send(self._out.data, total, size, addr) == errno.EMSGSIZE:
            assert peer.session is not None
            peer.session.path_too_small()
            log.warning(
                "path MTU to %s shrank: back to %d-byte datagrams, probing again",
                peer.label,
                peer.session.datagram_size,
            )

    def _drain_tap(self, now: float) -> None:
        """Read frames until the TAP is empty, and send each towards where its
        destination MAC lives.

        The first frame of a drain goes at once, sealed straight from the read
        buffer: a lone frame (a ping, a request) is not held back by the read
        that finds the TAP empty.  Later small frames of the same drain share
        messages per destination; large ones (TSO superframes) always go alone.
        Frames are read at offset PREFIX, leaving room for the route header and
        frame length in front.
        """
        fd, into, read = self.tap_fd, self._tap_into, libc.read
        buf, macs, me, peers = self._frame, self.macs, self.me, self.peers
        routes = self.topology.routes
        lanes = self._lanes
        dirty: set[tuple[bytes, bytes]] = set()
        first = True
        at = PREFIX + ETH_AT
        for _ in range(DRAIN_BATCH):
            n = read(fd, into, FRAME_BUFFER - PREFIX)
            if n < MIN_FRAME:
                if n < 0:
                    if libc.errno() not in (errno.EAGAIN, errno.EINTR):
                        self.drops["tap_read_error"] += 1
                    break
                self.drops["tap_runt"] += 1
                continue
            # The lane: a frame that would go straight out to a destination
            # the last such frame went to, with nothing changed since.
            lane = lanes.get(bytes(buf[at : at + 6])) if lanes and not dirty else None
            if (
                lane is not None
                and (first or n > lane.alone_above)
                and lane.routes is routes
                and lane.macs_version == macs.version
                and lane.session is lane.peer.session
                and lane.peer.udp_addr is not None
                and buf[at + 6 : at + 12] == lane.src
            ):
                try:
                    if now - lane.learned_at > LANE_RELEARN:
                        macs.learn(lane.src, LOCAL, now)  # keep our MAC fresh
                        lane.learned_at = now
                    lane.session.tx_frames += 1
                    lane.session.tx_bytes += n - ETH_AT
                    ROUTE_AND_LEN.pack_into(buf, 0, me, lane.dst, MAX_HOPS, n)
                    sealed = lane.session.seal_at(
                        PacketType.DATA, self._frame_ptr, PREFIX + n, self._out
                    )
                    self._send(lane.peer, sealed)
                except Exception as exc:  # a bug: count it, keep forwarding
                    self._internal_error("tap read", exc)
                first = False
                continue
            try:
                macs.learn(bytes(buf[at + 6 : at + 12]), LOCAL, now)
                owner = None if buf[at] & 1 else macs.lookup(bytes(buf[at : at + 6]), now)
                if owner == LOCAL:
                    continue  # the bridge delivers it; nothing for the mesh
                if owner is None:  # broadcast, multicast or unknown: our broadcast tree
                    keys = [(child, BROADCAST) for child in routes.children(me)]
                else:
                    hop = routes.next_hop.get(owner)
                    if hop is None:
                        self.drops["no route to peer"] += 1
                        continue
                    keys = [(hop, owner)]
                for key in keys:
                    peer = peers.get(key[0])
                    session = peer.session if peer is not None else None
                    if peer is None or session is None or peer.udp_addr is None:
                        continue
                    session.tx_frames += 1
                    session.tx_bytes += n - ETH_AT
                    packer = self._packers.get(key)
                    if packer is None:
                        prefix = ROUTE.pack(me, key[1], MAX_HOPS)
                        packer = self._packers[key] = FramePacker(0, prefix)
                    if not first:
                        packer.limit = session.message_budget * PACK_DATAGRAMS
                        if packer.fits(n):
                            packer.add(self._frame_view[PREFIX : PREFIX + n])
                            dirty.add(key)
                            continue
                    if packer.frames:
                        self._flush_packer(key)  # what came before goes first
                    if owner is not None:
                        self._open_lane(peer, session, owner, routes, now)
                    ROUTE_AND_LEN.pack_into(buf, 0, me, key[1], MAX_HOPS, n)
                    sealed = session.seal_at(
                        PacketType.DATA, self._frame_ptr, PREFIX + n, self._out
                    )
                    self._send(peer, sealed)
            except Exception as exc:  # a bug: count it, keep forwarding
                self._internal_error("tap read", exc)
            first = False
        for key in dirty:
            self._flush_packer(key)

    def _open_lane(
        self, peer: Peer, session: DataSession, dst: bytes, routes: Routes, now: float
    ) -> None:
        """Remember where the frame in the read buffer went, for the next one."""
        if len(self._lanes) >= MAX_LANES:
            self._lanes.clear()
        at = PREFIX + ETH_AT
        self._lanes[bytes(self._frame[at : at + 6])] = _Lane(
            peer,
            session,
            dst,
            bytes(self._frame[at + 6 : at + 12]),
            routes,
            self.macs.version,
            session.message_budget * PACK_DATAGRAMS - PREFIX,
            now,
        )

    def _flush_packer(self, key: tuple[bytes, bytes]) -> None:
        packer = self._packers.get(key)
        if packer is None or not packer.frames:
            return
        peer = self.peers.get(key[0])
        if peer is None or peer.session is None or peer.udp_addr is None:
            self.drops["next hop not connected"] += packer.frames
            del self._packers[key]  # the peer is gone
            return
        self._send(peer, peer.session.seal_into(PacketType.DATA, packer.take(), self._out))
