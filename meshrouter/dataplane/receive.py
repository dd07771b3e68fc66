"""The receiving half of the forwarder: datagrams from peers to the TAP (or on to other peers).

The flow of a datagram (mesh -> container):

1. ``Receiver.drain_udp`` reads with libc ``recvmsg`` into a fixed buffer; with
   UDP GRO one read may hold many datagrams of one flow, all of the segment
   size the control message gives, the last maybe shorter.
2. Each datagram's header is parsed (``wire.parse_header_untrusted``) and its
   receiver index picks the link (``LinkView.by_index``).
3. A message in one datagram is opened where it lies; the segments of a larger
   message that all arrived in this read are joined with one strided copy
   (``gso.compact_untrusted``) and opened; stragglers go to the session's
   reassembly until the message is whole.  Opening checks the replay window,
   authenticates and decrypts into a fixed plaintext buffer.
4. An authentic datagram's source address becomes the link's UDP address
   (the peer may have moved behind NAT).
5. Heartbeats go to the session (liveness, path MTU).  DATA is routed: a
   message for another peer, or a broadcast, is relayed (hop limit taken
   down by one, re-sealed for the next hop by ``send.Sender.relay``).
6. For us or broadcast: each frame's source MAC is learnt against the origin
   peer and the frame, ``virtio_net_hdr`` included, is written to the TAP.
7. After a read that wrote to the TAP, the TAP is drained at once: the kernel
   handled the written frame inside ``write()``, so a reply may already wait.

Anything wrong is a ``BadPacket``: dropped and counted by reason, never fatal.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from meshrouter.base.errors import BadPacket
from meshrouter.dataplane import libc
from meshrouter.dataplane.gso import SEND_BUFFER, byte_array, compact_untrusted
from meshrouter.dataplane.link import Link, LinkView, PlaneStats
from meshrouter.dataplane.mactable import MacTable
from meshrouter.dataplane.send import ETH_AT, MIN_FRAME, PREFIX, Sender
from meshrouter.dataplane.session import DataSession
from meshrouter.dataplane.sessionstate import native
from meshrouter.dataplane.udp import SOL_UDP, UDP_GRO
from meshrouter.proto.crypto import buffer_ptr
from meshrouter.proto.wire import (
    AD_SIZE,
    BROADCAST,
    HEADER,
    ROUTE,
    PacketType,
    iter_frames_untrusted,
    parse_header_untrusted,
    parse_route_untrusted,
)

if TYPE_CHECKING:
    import numpy as np

RECV_BUFFER = 1 << 17  # GRO hands over up to 64 KiB of coalesced datagrams
PLAIN_BUFFER = SEND_BUFFER  # the largest message's plaintext fits
DRAIN_BATCH = 64  # reads of one fd before looking at the others
SRC_AT = ETH_AT + 6  # source MAC in what the TAP takes


class Receiver:
    def __init__(
        self,
        *,
        me: bytes,
        tap_fd: int,
        udp_fd: int,
        links: LinkView,
        macs: MacTable,
        stats: PlaneStats,
        sender: Sender,
    ) -> None:
        self.me = me
        self.tap_fd = tap_fd
        self.udp_fd = udp_fd
        self.links = links
        self._by_index = links.by_index  # the same mapping for the table's life
        self.macs = macs
        self.stats = stats
        self.sender = sender
        self._wrote_tap = False  # a UDP read led to TAP writes (step 7)
        self.pinged: list[Link] = []  # links with pings to answer or answers heard
        self.cloop: native.Loop | None = None  # the C loop, which repeats our bindings
        # Joins TCP segments for the TAP when the Python loop runs with the
        # extension built (the C loop joins its own); None: frames go as they came.
        self.joiner: native.Coalescer | None = None
        self._recv = bytearray(RECV_BUFFER)  # what UDP gives
        self._recv_ptr = buffer_ptr(self._recv)
        self._recv_view = memoryview(self._recv)
        self._rm = libc.RecvMsg(self._recv)  # recvmsg's arguments, made once
        self._src_raw = b""  # port and address of the last authentic sender, raw
        self._src: tuple[str, int] = ("", 0)  # ... and as a tuple
        self._ct = bytearray(PLAIN_BUFFER)  # a message's ciphertext, put back together
        self._ct_ptr = buffer_ptr(self._ct)
        self._plain = bytearray(PLAIN_BUFFER)  # the plaintext of the message just opened
        self._plain_ptr = buffer_ptr(self._plain)
        self._plain_view = memoryview(self._plain)
        # numpy views of _recv and _ct, made when a run is first compacted
        # (Python loop only: the C loop compacts its own).
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def recv_buffer(self) -> bytearray:
        """What UDP reads fill (the C loop reads there too)."""
        return self._recv

    @property
    def plain_buffer(self) -> bytearray:
        """Where messages are opened (the C loop opens there too)."""
        return self._plain

    @property
    def name_buffer(self) -> bytearray:
        """The last datagram's sender, a raw sockaddr_in (the C loop's reads fill it too)."""
        return self._rm.name

    def drain_udp(self, now: float) -> None:
        """Read datagrams until the socket is empty (steps 1-7 at the top)."""
        try:
            self._drain_udp(now)
        finally:
            if self.joiner is not None:
                self.joiner.flush()  # what it holds goes out at the end of the drain

    def _drain_udp(self, now: float) -> None:
        fd, rm, recvmsg, drops = self.udp_fd, self._rm, libc.recvmsg, self.stats.drops
        msg = rm.msg
        for _ in range(DRAIN_BATCH):
            msg.msg_namelen = libc.NAME_SIZE
            msg.msg_controllen = libc.CONTROL_SIZE
            n = recvmsg(fd, msg, 0)
            if n < 0:
                if libc.errno() not in (errno.EAGAIN, errno.EINTR):
                    drops["udp_recv_error"] += 1
                return
            seg = (rm.control_int(SOL_UDP, UDP_GRO) or n) if msg.msg_controllen else n
            if n == 0:
                drops["empty_datagram"] += 1
            self._wrote_tap = False
            self.finish_read(0, n, seg, now)
            if self._wrote_tap:  # 7.
                self.sender.drain_tap(now)

    def finish_read(self, off: int, n: int, seg: int, now: float) -> None:
        """Steps 2-6 for the datagrams from ``off`` on of the read of ``n`` bytes
        in the receive buffer, in segments of ``seg``."""
        while off < n:
            try:
                off = self._receive_run(off, n, seg, now)
            except BadPacket as exc:
                self.stats.bad(exc, now)
                off += seg
            except Exception as exc:  # a bug: count it, keep forwarding
                self.stats.internal_error("udp receive", exc)
                off += seg

    def take_opened(self, index: int, ptype: int, size: int, length: int, now: float) -> None:
        """Steps 5-6 for a message the C loop authenticated and opened into the
        plaintext buffer (``size`` bytes; ``length``: its first datagram's)."""
        link = self._by_index.get(index)
        if link is None:  # withdrawn since the loop learnt it
            self.stats.drops["unknown_receiver"] += 1
            return
        plain = self._plain_view[:size]
        try:
            if ptype == PacketType.HEARTBEAT:
                self._heartbeat(link, plain, length, now)
            else:
                self._deliver(link.session, plain, now)
        except BadPacket as exc:
            self.stats.bad(exc, now)
        except Exception as exc:  # a bug: count it, keep forwarding
            self.stats.internal_error("udp receive", exc)

    def _receive_run(self, off: int, n: int, seg: int, now: float) -> int:
        """Handle the datagram at ``off`` of a (maybe GRO-coalesced) read, and the
        rest of its message with it when all of it is there.  Returns where the
        next datagram starts.  Raises only BadPacket (the caller counts it)."""
        end = off + seg if off + seg < n else n
        ptype, index, counter, segno, nseg = parse_header_untrusted(self._recv, off, end)  # 2.
        link = self._by_index.get(index)
        if link is None:
            raise BadPacket("unknown receiver index", "unknown_receiver")
        session = link.session
        length = end - off
        if nseg == 1:  # 3. most messages: opened where they lie
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
                arrays = self._arrays
                if arrays is None:
                    arrays = self._arrays = (byte_array(self._recv), byte_array(self._ct))
                copied = compact_untrusted(
                    arrays[0], off, stop, count, seg, segno, counter, arrays[1]
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
        # 4. Authentic: follow the peer's address if it moved (NAT).
        if self._rm.name[:24] != self._src_raw:  # family, port and address, either family
            self._src_raw = bytes(self._rm.name[:24])
            self._src = self._rm.address()
        if link.udp_addr != self._src:
            link.udp_addr = self._src
        if self.cloop is not None:  # the C loop takes this link's next datagrams
            state = session.state
            assert isinstance(state, native.Session)
            self.cloop.bind(link.index, state)
        if ptype == PacketType.HEARTBEAT:  # 5.
            self._heartbeat(link, plain, length, now)
        else:
            self._deliver(session, plain, now)
        return end

    def _heartbeat(self, link: Link, plain: memoryview, length: int, now: float) -> None:
        """A heartbeat for ``link`` (from either loop): liveness and path MTU,
        and pings to answer or answers to ours for the forwarder's timers."""
        session = link.session
        session.on_heartbeat(plain, length, now)
        if session.pongs_due or session.pongs_heard:
            self.pinged.append(link)

    def _deliver(self, session: DataSession, plain: memoryview, now: float) -> None:
        origin, dst, hops, size = parse_route_untrusted(plain)
        if origin == self.me:
            raise BadPacket("own frame came back", "own_frame")
        if dst != self.me:  # 5. relay
            if hops == 0:
                raise BadPacket("hop limit reached", "hop_limit")
            relay = bytearray(plain)
            relay[ROUTE.size - 1] = hops - 1
            routes = self.links.routes
            if dst == BROADCAST:
                for child in routes.children(origin):
                    self.sender.relay(child, relay)
            else:
                if self.me in routes.leaves:
                    raise BadPacket("relaying refused (--relay no)", "relay_refused")
                hop = routes.next_hop.get(dst)
                if hop is None:
                    raise BadPacket("no route to relay destination", "no_route")
                if size == 0:  # sealed for the destination alone: passed on unread
                    self.stats.counters["relayed_unread"] += 1
                self.sender.relay(hop, relay)
                if self.cloop is not None:  # the C loop relays the next ones itself
                    link = self.links.by_name.get(hop)
                    if link is not None:
                        state = link.session.state
                        assert isinstance(state, native.Session)
                        self.cloop.set_relay(dst, hop, state)
                return
        if size == 0:  # sealed for us alone by the origin, relayed unread
            self._open_sealed(origin, plain[PREFIX:], now)
            return
        self._frames(session, origin, plain, size, now)

    def _open_sealed(self, origin: bytes, datagram: memoryview, now: float) -> None:
        """A datagram the origin sealed for us with our session with it (a
        connection through the relay, whose UDP does not get through), carried
        inside a relayed message (``send._send_through``).  Opened by its
        receiver index, whose link must be the origin's; its source address
        is the relay's, so the link's UDP address stays.  Raises only BadPacket."""
        ptype, index, counter, segno, nseg = parse_header_untrusted(datagram)
        link = self._by_index.get(index)
        if ptype != PacketType.DATA or link is None or link.peer != origin:
            raise BadPacket("sealed end to end by a peer we hold no session with", "e2e_unknown")
        session = link.session
        heard = session.state.heard_at
        got = session.receive_untrusted(datagram, counter, segno, nseg, now)
        session.state.heard_at = heard  # relayed: says nothing of the UDP path to it
        if got is None:
            return  # more segments to come
        inner_origin, dst, _hops, size = parse_route_untrusted(got)
        if inner_origin != origin or dst != self.me or size == 0:
            raise BadPacket("a message sealed end to end that is not the origin's to us", "e2e_bad")
        self.stats.counters["opened_end_to_end"] += 1
        if self.cloop is not None:  # the C loop opens the next ones
            state = session.state
            assert isinstance(state, native.Session)
            self.cloop.bind_sealed(index, state, origin)
        self._frames(session, origin, got, size, now)

    def _frames(
        self, session: DataSession, origin: bytes, plain: memoryview, size: int, now: float
    ) -> None:
        end = len(plain)
        # 6. One frame (the common case) or several, each len(4) || virtio_net_hdr || frame.
        lone = PREFIX + size == end
        frames = (plain[PREFIX:],) if lone else iter_frames_untrusted(plain, ROUTE.size)
        tap_fd, learn, drops = self.tap_fd, self.macs.learn, self.stats.drops
        joiner = self.joiner
        state = session.state
        seen = self.cloop.seen if self.cloop is not None else None
        for frame in frames:
            if len(frame) < MIN_FRAME:
                raise BadPacket("runt frame", "runt_frame")
            src = frame[SRC_AT : SRC_AT + 6].tobytes()
            learn(src, origin, now)
            if seen is not None:
                seen(src, origin, now)
            state.rx_frames += 1
            state.rx_bytes += len(frame) - ETH_AT
            if joiner is not None:
                self._wrote_tap = True
                joiner.add(frame)
            elif tap_fd >= 0:
                self._wrote_tap = True
                try:
                    os.write(tap_fd, frame)
                except BlockingIOError:
                    drops["tap_write_would_block"] += 1
                except OSError:
                    drops["tap_write_error"] += 1
