"""The sending half of the forwarder: frames from the TAP to peers over UDP.

The flow of a frame (container -> mesh):

1. The container's frame crosses its veth and the host's bridge to the TAP;
   the kernel hands it over as ``virtio_net_hdr || frame``, up to a 64 KiB
   TSO superframe (``Sender.drain_tap`` reads it with libc ``read`` into a
   fixed buffer, at offset ``PREFIX``).
2. If a *lane* to its destination MAC is open and nothing that decided it has
   changed, go to 6.
3. The source MAC is learnt as ``LOCAL``; the destination MAC is looked up:
   local frames are left to the bridge; unknown, broadcast and multicast
   frames go to our children in our own broadcast tree; a known MAC goes to
   the next hop towards the peer it lives at.
4. The first frame of a drain goes at once; later small frames of the same
   drain are packed per (next hop, destination) into shared messages and
   flushed at the end of the drain.
5. A frame that went straight out opens a lane for its destination MAC.
6. The route header (origin, destination, hops) and frame length are written
   in front of the frame in place, the whole is sealed with one AEAD call
   (``DataSession.seal_at``) into datagrams laid out for GSO, and sent with
   one ``sendto`` or one GSO ``sendmsg`` (``Sender.send``).  A TCP
   superframe is instead cut into segments, each sealed as a message of its
   own in one datagram (``Sender._send_segments``), so a lost datagram costs
   one segment.

Relayed messages (from ``receive``) leave through ``Sender.relay``.

End to end through a relay: a frame for a peer the routes reach through
another, when we hold a session with that peer itself (a connection made
through the relay, ``mesh.tunnel``, whose UDP cannot get through), is sealed
for that peer first and the datagram goes, whole, as the payload of a
message to the next hop: ``origin || destination || hops || len 0 ||
datagram`` (a first frame of length 0, which no frame has, marks it).  The
relays open only that outer message and pass the datagram on unread; the
destination opens it with its own session (``receive``).  Such frames take
no lane and are never packed: one sealed datagram inside one message.
"""

from __future__ import annotations

import errno
import logging

from meshrouter.base.constants import ETH_HEADER, VNET_HDR_LEN
from meshrouter.base.errors import BadPacket
from meshrouter.dataplane import libc, tso
from meshrouter.dataplane.gso import SendBuffer
from meshrouter.dataplane.link import Link, LinkView, PlaneStats
from meshrouter.dataplane.mactable import LOCAL, MacTable
from meshrouter.dataplane.routes import Routes
from meshrouter.dataplane.session import DataSession
from meshrouter.dataplane.sessionstate import native
from meshrouter.dataplane.udp import UdpSocket
from meshrouter.proto.crypto import buffer_ptr
from meshrouter.proto.wire import (
    BROADCAST,
    HEADER,
    MAX_HOPS,
    ROUTE,
    ROUTE_AND_LEN,
    FramePacker,
    PacketType,
)

log = logging.getLogger("meshrouter")

FRAME_BUFFER = 70_000  # a 64 KiB TSO superframe, its virtio header and our prefix
DRAIN_BATCH = 64  # reads of one fd before looking at the others
# Frames read in one drain share messages of up to this many datagrams: one
# AEAD call for a burst of small frames (UDP, ACKs).  One, so that a lost
# datagram costs only the frames it carried (issue 22: with 16, a TCP stream
# in loss recovery, whose retransmissions are single segments, lost 16 of
# them to each lost datagram), and so that a pack that arrives datagram by
# datagram is opened in C, with no reassembly.  A frame larger than a
# datagram's room goes alone.
PACK_DATAGRAMS = 1
LANE_RELEARN = 1.0  # a lane refreshes its source MAC in the table this often
MAX_LANES = 4096
ETH_AT = VNET_HDR_LEN  # where the Ethernet header starts in what the TAP gives us
PREFIX = ROUTE_AND_LEN.size  # route header and frame length before a lone frame
MIN_FRAME = ETH_AT + ETH_HEADER


class _Lane:
    """Where frames to one destination MAC go, while nothing that decided it
    changes: the routes (a new object after any topology change), the MAC
    table (its version), the link towards the next hop, the source MAC.
    Such a frame skips MAC learning and lookup, routing and packing: the
    per-frame Python on this path is what a small frame's latency is made of."""

    __slots__ = ("alone_above", "dst", "learned_at", "link", "macs_version", "routes", "src")

    def __init__(
        self,
        link: Link,
        dst: bytes,
        src: bytes,
        routes: Routes,
        macs_version: int,
        alone_above: int,
        learned_at: float,
    ) -> None:
        self.link = link
        self.dst = dst  # the peer the destination MAC lives at
        self.src = src
        self.routes = routes
        self.macs_version = macs_version
        self.alone_above = alone_above  # larger frames are never packed
        self.learned_at = learned_at


class Sender:
    def __init__(
        self,
        *,
        me: bytes,
        tap_fd: int,
        udp: UdpSocket,
        links: LinkView,
        macs: MacTable,
        stats: PlaneStats,
    ) -> None:
        self.me = me
        self.tap_fd = tap_fd
        self.udp = udp
        self.links = links
        self.macs = macs
        self.stats = stats
        self._packers: dict[tuple[bytes, bytes], FramePacker] = {}
        self._dirty: set[tuple[bytes, bytes]] = set()  # packers holding frames of this drain
        self.cloop: native.Loop | None = None  # the C loop, which repeats our lanes
        self.lanes: dict[bytes, _Lane] = {}  # by destination MAC
        # Buffers reused for every frame, with their C pointers made once.
        self._out = SendBuffer()  # sealed datagrams, laid out for GSO
        self._inner = SendBuffer()  # datagrams sealed for a peer beyond a relay
        self._frame = bytearray(FRAME_BUFFER)  # what the TAP gives, at PREFIX
        self._frame_ptr = buffer_ptr(self._frame)
        self._tap_into = self._frame_ptr + PREFIX
        self._frame_view = memoryview(self._frame)

    # -- out to UDP -----------------------------------------------------

    def send(self, link: Link, sealed: tuple[int, int]) -> None:
        """Send the datagrams just sealed into ``self._out`` (GSO when several)."""
        addr = link.udp_addr
        if addr is None:
            self.stats.drops["no_udp_address"] += 1
            return
        total, size = sealed
        if total <= size:  # one datagram, the common case: no detour
            try:
                self.udp.sendto(self._out.view[:total], addr)
            except OSError:
                pass  # udp.send tries again, and counts and classifies the failure
            else:
                self.udp.plain_sends += 1
                return
        if self.udp.send(self._out.data, total, size, addr) == errno.EMSGSIZE:
            self.path_too_small(link)

    def path_too_small(self, link: Link) -> None:
        """A send to ``link`` failed with EMSGSIZE: the path shrank."""
        link.session.path_too_small()
        log.warning(
            "path MTU to %s shrank: back to %d-byte datagrams, probing again",
            link.label,
            link.session.datagram_size,
        )

    @property
    def frame_buffer(self) -> bytearray:
        """Where frames are read, at ``PREFIX`` (the C loop reads there too)."""
        return self._frame

    def relay(self, hop: bytes, plain: bytearray) -> None:
        """Seal a relayed message's plaintext for the next hop and send it."""
        link = self.links.by_name.get(hop)
        if link is None or link.udp_addr is None:
            self.stats.drops["next_hop_down"] += 1
            return
        self.stats.counters["messages_relayed"] += 1
        self.send(link, link.session.seal_into(PacketType.DATA, plain, self._out))

    def _beyond(self, dst: bytes) -> bool:
        """A session with ``dst`` to seal for it alone, beyond a relay (a lane
        opened before that session was published no longer holds)."""
        far = self.links.by_name.get(dst)
        return far is not None and far.e2e

    def _send_through(self, hop: Link, inner: DataSession, dst: bytes, n: int) -> None:
        """Seal the frame of ``n`` bytes in the read buffer for ``dst`` with our
        session with it (a TCP superframe cut into segments first), and send
        each datagram inside a message of its own to ``hop`` (the module's
        last paragraph)."""
        room = hop.session.message_budget - PREFIX  # an inner datagram, whole
        head = ROUTE_AND_LEN.pack(self.me, dst, MAX_HOPS, 0)
        outer, counters = hop.session, self.stats.counters
        for datagram in self._sealed_for(inner, dst, n, room):
            self.send(hop, outer.seal_into(PacketType.DATA, head + datagram, self._out))
            counters["sealed_end_to_end"] += 1

    def _sealed_for(
        self, inner: DataSession, dst: bytes, n: int, room: int
    ) -> list[bytes] | list[memoryview]:
        """The frame of ``n`` bytes in the read buffer sealed with ``inner`` as
        datagrams of at most ``room`` bytes: a TCP superframe as one message
        per segment, anything else as one message (in segments if need be)."""
        frame = self._frame_view[PREFIX : PREFIX + n]
        state = inner.state
        if self._frame[PREFIX + 1] != tso.GSO_NONE:
            if native is not None and isinstance(state, native.Session):
                size = state.datagram_size
                state.datagram_size = room  # this thread's, and only for this call
                try:
                    count, total, stride = state.seal_segments(
                        frame, self.me, dst, self._inner.data
                    )
                finally:
                    state.datagram_size = size
                if count:
                    return self._cut(total, stride)
            else:
                plains = self._model_cut(inner, dst, frame, room)
                if plains:
                    return [d for p in plains for d in inner.seal(PacketType.DATA, p, room)]
        state.tx_frames += 1
        state.tx_bytes += n - ETH_AT
        ROUTE_AND_LEN.pack_into(self._frame, 0, self.me, dst, MAX_HOPS, n)
        sealed = inner.seal_at(PacketType.DATA, self._frame_ptr, PREFIX + n, self._inner, room)
        return self._cut(*sealed)

    def _cut(self, total: int, stride: int) -> list[memoryview]:
        view = self._inner.view
        return [view[i : min(i + stride, total)] for i in range(0, total, stride)]

    def _send_lone(self, link: Link, session: DataSession, dst: bytes, n: int) -> None:
        """Seal the frame of ``n`` bytes in the read buffer as one message, in
        place; a TCP superframe as one message per segment (``_send_segments``)."""
        if self._frame[PREFIX + 1] != tso.GSO_NONE and self._send_segments(link, session, dst, n):
            return
        state = session.state
        state.tx_frames += 1
        state.tx_bytes += n - ETH_AT
        ROUTE_AND_LEN.pack_into(self._frame, 0, self.me, dst, MAX_HOPS, n)
        self.send(link, session.seal_at(PacketType.DATA, self._frame_ptr, PREFIX + n, self._out))

    def _send_segments(self, link: Link, session: DataSession, dst: bytes, n: int) -> bool:
        """A TCP superframe cut into segments, each sealed as a message of its
        own so that a lost datagram costs one segment (issue 22): in C when the
        extension is built (as the C loop does), else with the model ``tso``.
        False if the frame is no superframe to cut: the caller seals it whole."""
        frame = self._frame_view[PREFIX : PREFIX + n]
        state = session.state
        if native is not None and isinstance(state, native.Session):
            count, total, stride = state.seal_segments(frame, self.me, dst, self._out.data)
            if not count:
                return False
            self.stats.counters["superframes_cut"] += 1
            self.send(link, (total, stride))
            return True
        plains = self._model_cut(session, dst, frame, session.datagram_size)
        if not plains:
            return False
        self.stats.counters["superframes_cut"] += 1
        for plain in plains:
            self.send(link, session.seal_into(PacketType.DATA, plain, self._out))
        return True

    def _model_cut(
        self, session: DataSession, dst: bytes, frame: memoryview, size: int
    ) -> list[bytes]:
        """A TCP superframe cut by the model ``tso`` into segments whose
        messages (route header, segment) fit datagrams of ``size`` bytes,
        counted as sent: their plaintexts, or none if it is no superframe to cut."""
        try:
            over = HEADER.size + session.tag_bytes + PREFIX + tso.payload_offset(frame)
            fit = size - over
            if fit < 64:
                return []
            segments = tso.segment_untrusted(tso.with_mss(frame, fit))
        except BadPacket:
            return []
        state = session.state
        plains = []
        for seg in segments:
            state.tx_frames += 1
            state.tx_bytes += len(seg) - ETH_AT
            plains.append(ROUTE_AND_LEN.pack(self.me, dst, MAX_HOPS, len(seg)) + seg)
        return plains

    # -- in from the TAP ------------------------------------------------

    def drain_tap(self, now: float) -> None:
        """Read frames until the TAP is empty, and send each towards where its
        destination MAC lives (steps 1-6 at the top of this module)."""
        fd, into, read = self.tap_fd, self._tap_into, libc.read
        buf, macs, by_name = self._frame, self.macs, self.links.by_name
        routes = self.links.routes
        lanes = self.lanes
        first = True
        at = PREFIX + ETH_AT
        for _ in range(DRAIN_BATCH):
            n = read(fd, into, FRAME_BUFFER - PREFIX)
            if n < MIN_FRAME:
                if n < 0:
                    if libc.errno() not in (errno.EAGAIN, errno.EINTR):
                        self.stats.drops["tap_read_error"] += 1
                    break
                self.stats.drops["tap_runt"] += 1
                continue
            # 2. The lane: a frame that would go straight out to a destination
            # the last such frame went to, with nothing changed since.
            lane = lanes.get(bytes(buf[at : at + 6])) if lanes and not self._dirty else None
            if (
                lane is not None
                and (first or n > lane.alone_above)
                and lane.routes is routes
                and lane.macs_version == macs.version
                and by_name.get(lane.link.peer) is lane.link
                and (lane.dst == lane.link.peer or not self._beyond(lane.dst))
                and lane.link.udp_addr is not None
                and buf[at + 6 : at + 12] == lane.src
            ):
                try:
                    if now - lane.learned_at > LANE_RELEARN:
                        macs.learn(lane.src, LOCAL, now)  # keep our MAC fresh
                        lane.learned_at = now
                    self._send_lone(lane.link, lane.link.session, lane.dst, n)
                except Exception as exc:  # a bug: count it, keep forwarding
                    self.stats.internal_error("tap read", exc)
                first = False
                continue
            self.route_frame(n, first, now)
            first = False
        self.flush_packed()

    def route_frame(self, n: int, first: bool, now: float) -> None:
        """Steps 3-6 for the frame of ``n`` bytes in the read buffer (at
        ``PREFIX``); ``first``: the first frame of this drain of the TAP."""
        buf, macs, by_name = self._frame, self.macs, self.links.by_name
        routes = self.links.routes
        at = PREFIX + ETH_AT
        try:
            # 3. Learn, look up, route.
            macs.learn(bytes(buf[at + 6 : at + 12]), LOCAL, now)
            owner = None if buf[at] & 1 else macs.lookup(bytes(buf[at : at + 6]), now)
            if owner == LOCAL:
                return  # the bridge delivers it; nothing for the mesh
            if owner is None:  # broadcast, multicast or unknown: our broadcast tree
                keys = [(child, BROADCAST) for child in routes.children(self.me)]
            else:
                hop = routes.next_hop.get(owner)
                if hop is None:
                    self.stats.drops["no_route"] += 1
                    return
                inner = by_name.get(owner) if hop != owner else None
                if inner is not None and inner.e2e:  # beyond a relay, sealed for it alone
                    link = by_name.get(hop)
                    if link is None or link.udp_addr is None:
                        self.stats.drops["next_hop_down"] += 1
                        return
                    if self.cloop is not None:  # the C loop does the same from the next frame
                        self._through_lane(link, inner, owner, now)
                    self._send_through(link, inner.session, owner, n)
                    return
                keys = [(hop, owner)]
            for key in keys:
                link = by_name.get(key[0])
                if link is None or link.udp_addr is None:
                    continue
                session = link.session
                # 4. Pack behind the first frame of the drain, or go now.
                packer = self._packers.get(key)
                if packer is None:
                    prefix = ROUTE.pack(self.me, key[1], MAX_HOPS)
                    packer = self._packers[key] = FramePacker(0, prefix)
                if not first:
                    packer.limit = session.message_budget * PACK_DATAGRAMS
                    if packer.frames and not packer.fits(n) and packer.fits_empty(n):
                        self._flush_packer(key)  # full: the next pack starts with this frame
                    if packer.fits(n):
                        session.state.tx_frames += 1
                        session.state.tx_bytes += n - ETH_AT
                        packer.add(self._frame_view[PREFIX : PREFIX + n])
                        self._dirty.add(key)
                        continue
                if packer.frames:
                    self._flush_packer(key)  # what came before goes first
                if owner is not None:  # 5.
                    self._open_lane(link, owner, routes, now)
                self._send_lone(link, session, key[1], n)  # 6.
        except Exception as exc:  # a bug: count it, keep forwarding
            self.stats.internal_error("tap read", exc)

    def flush_packed(self) -> None:
        """Send the messages packed during this drain (step 4)."""
        for key in self._dirty:
            self._flush_packer(key)
        self._dirty.clear()

    def _open_lane(self, link: Link, dst: bytes, routes: Routes, now: float) -> None:
        """Remember where the frame in the read buffer went, for the next one."""
        if len(self.lanes) >= MAX_LANES:
            self.lanes.clear()
        at = PREFIX + ETH_AT
        lane = _Lane(
            link,
            dst,
            bytes(self._frame[at + 6 : at + 12]),
            routes,
            self.macs.version,
            link.session.message_budget * PACK_DATAGRAMS - PREFIX,
            now,
        )
        mac = bytes(self._frame[at : at + 6])
        self.lanes[mac] = lane
        if self.cloop is not None:
            state = link.session.state
            assert isinstance(state, native.Session)
            self.cloop.set_lane(mac, lane.src, dst, link.peer, state, lane.alone_above, now)

    def _through_lane(self, link: Link, inner: Link, dst: bytes, now: float) -> None:
        """Teach the C loop the lane of the frame in the read buffer, to a
        peer beyond the relay ``link`` leads to (``_send_through``)."""
        assert self.cloop is not None
        at = PREFIX + ETH_AT
        hop, far = link.session.state, inner.session.state
        assert isinstance(hop, native.Session)
        assert isinstance(far, native.Session)
        mac, src = bytes(self._frame[at : at + 6]), bytes(self._frame[at + 6 : at + 12])
        self.cloop.set_lane(mac, src, dst, link.peer, hop, 0, now, far)

    def _flush_packer(self, key: tuple[bytes, bytes]) -> None:
        packer = self._packers.get(key)
        if packer is None or not packer.frames:
            return
        link = self.links.by_name.get(key[0])
        if link is None or link.udp_addr is None:
            self.stats.drops["next_hop_down"] += packer.frames
            del self._packers[key]  # the peer is gone
            return
        self.send(link, link.session.seal_into(PacketType.DATA, packer.take(), self._out))
