"""A data-plane session towards one peer (sans-IO): crypto, segmentation, reassembly, liveness.

Each direction has its own key and the message counter is the nonce; a
message passes an anti-replay window (``replay``) before it is trusted.
Segments of a message that did not come in one GRO read are kept until the
message is whole (at most ``MAX_PARTIAL`` messages at a time).

HEARTBEAT plaintext is ``flags(1) || largest probe heard(2)`` and padding.
Bit 0 of flags means "I have heard your UDP recently"; a session is
*established* only when UDP flows both ways.  Bit 1 marks a path-MTU probe,
padded to the datagram size under test (see ``pmtu``).
"""

from __future__ import annotations

import math
import struct

from meshrouter.base.constants import REKEY_AFTER_MESSAGES, UDP_TIMEOUT
from meshrouter.base.errors import BadPacket, LocalProtocolError
from meshrouter.dataplane.gso import SendBuffer
from meshrouter.dataplane.pmtu import PathMtu
from meshrouter.dataplane.sessionstate import SessionState, new_state
from meshrouter.proto.crypto import Opener, Ptr, Sealer, Suite, buffer_ptr, readonly_ptr
from meshrouter.proto.wire import AD_SIZE, HEADER, MAX_SEGMENTS, PacketType

MAX_PARTIAL = 8  # messages being reassembled per session
HEARD_YOU = 0x01
PROBE = 0x02
# 'mesh ping': a heartbeat with PING and a token after its fixed part is
# answered at once with a heartbeat with PONG and the same token.  Routers
# before 0.2 read only the fixed part: they ignore both (the ping times out).
PING = 0x04
PONG = 0x08
PING_TOKEN = 8
_HB = struct.Struct("!BH")


class _Partial:
    """A message being reassembled: runs of segments, by first segment number."""

    __slots__ = ("missing", "nseg", "runs")

    def __init__(self, nseg: int) -> None:
        self.nseg = nseg
        self.runs: dict[int, tuple[int, bytes]] = {}  # first segment -> (count, bodies)
        self.missing = nseg

    def add(self, first: int, count: int, bodies: bytes) -> None:
        for start, (n, _) in self.runs.items():
            if start < first + count and first < start + n:
                return  # overlaps what we have: a duplicate
        self.runs[first] = (count, bodies)
        self.missing -= count

    def join(self) -> bytes:
        return b"".join(self.runs[k][1] for k in sorted(self.runs))


class DataSession:
    """Crypto, segmentation, reassembly, liveness and path MTU towards one peer.

    Thread rule: only the forwarder thread calls the methods that seal, open or
    take heartbeats; the control plane reads the counters and ``established``.
    The nonce counter, the replay window, the counters and the time we last
    heard the peer live in ``state`` (``dataplane``), which the C loop uses too.
    """

    def __init__(
        self,
        *,
        suite: Suite,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        peer_index: int,
        udp_timeout: float = UDP_TIMEOUT,
        pure: bool = False,
    ) -> None:
        self._sealer = Sealer(suite, send_key)
        self._opener = Opener(suite, recv_key)
        self._tag = self._sealer.info.tag_bytes
        self.state: SessionState = new_state(suite, send_key, recv_key, peer_index, pure=pure)
        self._partial: dict[int, _Partial] = {}
        self._plain = bytearray()  # the last plaintext opened (returned as a view)
        self.local_index = local_index
        self.peer_index = peer_index
        self.udp_timeout = udp_timeout
        self._peer_heard_us_at = -math.inf
        self.pmtu = PathMtu()
        self.state.datagram_size = self.pmtu.datagram_size
        self.reassembly_drops = 0
        self.pongs_due: list[bytes] = []  # tokens of pings heard, to answer
        self.pongs_heard: list[tuple[bytes, float]] = []  # answers to our pings, and when

    @property
    def datagram_size(self) -> int:
        return self.pmtu.datagram_size

    @datagram_size.setter
    def datagram_size(self, size: int) -> None:
        self.pmtu.datagram_size = size
        self.state.datagram_size = size

    @property
    def heard_at(self) -> float:
        return self.state.heard_at

    @property
    def tag_bytes(self) -> int:
        return self._tag

    @property
    def messages_sealed(self) -> int:
        return self.state.counter

    def needs_rekey(self, limit: int = REKEY_AFTER_MESSAGES) -> bool:
        return self.state.counter >= limit

    @property
    def message_budget(self) -> int:
        """Largest plaintext that still fits one datagram."""
        return self.pmtu.datagram_size - HEADER.size - self._tag

    # -- sending --------------------------------------------------------

    def seal_at(
        self,
        ptype: PacketType,
        plaintext: Ptr,
        size: int,
        out: SendBuffer,
        datagram_size: int = 0,
    ) -> tuple[int, int]:
        """Seal the ``size`` bytes of plaintext at ``plaintext`` as one message and
        lay its datagrams out in ``out.data``.

        Datagrams are at most ``datagram_size`` bytes (default: the path MTU).
        Returns ``(total_bytes, datagram_size)``: the datagrams are
        ``out.data[i*size:(i+1)*size]``, the last possibly shorter, ready for one
        UDP GSO send with segment size ``datagram_size``.
        """
        sealer, state = self._sealer, self.state
        counter = state.next_counter()
        if counter < 0:
            raise LocalProtocolError("session exhausted its nonces; reconnect to rekey")
        room = (datagram_size or self.pmtu.datagram_size) - HEADER.size
        ct_len = size + self._tag
        if ct_len <= room:  # most messages: sealed straight behind the header
            HEADER.pack_into(out.data, 0, ptype, self.peer_index, counter, 0, 1)
            sealer.seal_ptr(counter, out.ptr + HEADER.size, plaintext, size, out.ptr, AD_SIZE)
            state.tx_packets += 1
            state.tx_messages += 1
            return HEADER.size + ct_len, room + HEADER.size
        nseg = -(-ct_len // room)
        if nseg > MAX_SEGMENTS:
            raise ValueError(f"message of {size} bytes needs {nseg} segments")
        header = HEADER.pack(ptype, self.peer_index, counter, 0, nseg)
        sealer.seal_ptr(counter, out.ct_ptr, plaintext, size, readonly_ptr(header), AD_SIZE)
        total = out.lay_out(header, ct_len, room)
        state.tx_packets += nseg
        state.tx_messages += 1
        return total, room + HEADER.size

    def seal_into(
        self,
        ptype: PacketType,
        plaintext: bytes | bytearray | memoryview,
        out: SendBuffer,
        datagram_size: int = 0,
    ) -> tuple[int, int]:
        """``seal_at`` for a plaintext given as bytes."""
        return self.seal_at(ptype, readonly_ptr(plaintext), len(plaintext), out, datagram_size)

    def seal(self, ptype: PacketType, plaintext: bytes, datagram_size: int = 0) -> list[bytes]:
        """Seal one message; return its datagrams (for tests and rare messages)."""
        out = SendBuffer(len(plaintext) + self._tag + MAX_SEGMENTS * HEADER.size)
        total, size = self.seal_into(ptype, plaintext, out, datagram_size)
        return [bytes(out.data[i : min(i + size, total)]) for i in range(0, total, size)]

    # -- receiving ------------------------------------------------------

    def receive_untrusted(
        self, datagram: bytes | memoryview, counter: int, seg: int, nseg: int, now: float
    ) -> memoryview | None:
        """Take one datagram (header already parsed).  Returns the plaintext once the
        message is whole and authentic, else None.  Raises only BadPacket."""
        if nseg == 1:
            return self.open_untrusted(datagram[:AD_SIZE], counter, datagram[HEADER.size :], 1, now)
        return self.receive_run_untrusted(
            datagram[:AD_SIZE], counter, seg, 1, nseg, bytes(datagram[HEADER.size :]), now
        )

    def receive_run_untrusted(
        self,
        ad: bytes | memoryview,
        counter: int,
        first: int,
        count: int,
        nseg: int,
        bodies: bytes,
        now: float,
    ) -> memoryview | None:
        """Take segments first..first+count-1 of a message (their bodies joined).
        Returns the plaintext once the message is whole and authentic, else None.
        Raises only BadPacket."""
        if not self.state.would_accept(counter):
            raise BadPacket("replayed or too old", "replayed")
        if count == nseg:
            return self.open_untrusted(ad, counter, bodies, nseg, now)
        partial = self._partial.get(counter)
        if partial is None:
            if len(self._partial) >= MAX_PARTIAL:
                # Forget the oldest message still missing segments.
                del self._partial[next(iter(self._partial))]
                self.reassembly_drops += 1
            partial = self._partial[counter] = _Partial(nseg)
        elif partial.nseg != nseg:
            raise BadPacket("segment count changed", "bad_segments")
        partial.add(first, count, bodies)
        if partial.missing:
            return None
        del self._partial[counter]
        return self.open_untrusted(ad, counter, partial.join(), nseg, now)

    def open_at_untrusted(
        self, ad: Ptr, counter: int, ct: Ptr, ct_len: int, nseg: int, now: float, out: Ptr
    ) -> int:
        """Authenticate and decrypt a whole message of ``ct_len`` bytes at ``ct``
        (its associated data at ``ad``) into ``out``, which has room for it.
        Returns the plaintext length.  Raises only BadPacket."""
        state = self.state
        if counter <= state.top and not state.would_accept(counter):
            raise BadPacket("replayed or too old", "replayed")
        size = ct_len - self._tag
        if size < 0:
            raise BadPacket("ciphertext too short", "short_datagram")
        if not self._opener.open_ptr(counter, out, ct, ct_len, ad, AD_SIZE):
            raise BadPacket("authentication failed", "auth_failed")
        state.accept(counter)
        if self._partial:
            self._partial.pop(counter, None)
        state.heard_at = now
        state.rx_packets += nseg
        state.rx_messages += 1
        return size

    def open_untrusted(
        self, ad: bytes | memoryview, counter: int, ct: bytes | memoryview, nseg: int, now: float
    ) -> memoryview:
        """``open_at_untrusted`` for bytes.  The plaintext is a view of a buffer
        this session reuses: valid until the next message is opened this way."""
        if len(ad) != AD_SIZE:
            raise BadPacket("bad associated data", "auth_failed")
        if len(self._plain) < len(ct):
            # A new buffer, not a resized one: views of the old stay valid.
            self._plain = bytearray(max(len(ct), 2048))
        size = self.open_at_untrusted(
            readonly_ptr(ad), counter, readonly_ptr(ct), len(ct), nseg, now, buffer_ptr(self._plain)
        )
        return memoryview(self._plain)[:size]

    # -- heartbeats -----------------------------------------------------

    def heartbeats(self, now: float, *, probe: bool) -> list[bytes]:
        """The heartbeat to send now, plus path-MTU probes when ``probe``."""
        flags = HEARD_YOU if self.hears_peer(now) else 0
        out = self.seal(PacketType.HEARTBEAT, _HB.pack(flags, self.pmtu.report(now)))
        if probe:
            overhead = HEADER.size + self._tag
            for size in self.pmtu.sizes_to_probe():
                pad = bytes(size - overhead - _HB.size)
                out += self.seal(PacketType.HEARTBEAT, _HB.pack(flags | PROBE, 0) + pad, size)
        return out

    def ping(self, token: bytes, *, pong: bool = False) -> list[bytes]:
        """A heartbeat that asks the peer to answer at once (or the answer)."""
        flags = PONG if pong else PING
        return self.seal(PacketType.HEARTBEAT, _HB.pack(flags, 0) + token[:PING_TOKEN])

    def on_heartbeat(self, plain: bytes | memoryview, datagram_len: int, now: float) -> None:
        if len(plain) < _HB.size:
            return
        flags, peer_heard = _HB.unpack_from(plain)
        if flags & (PING | PONG) and len(plain) >= _HB.size + PING_TOKEN:
            token = bytes(plain[_HB.size : _HB.size + PING_TOKEN])
            if flags & PING and len(self.pongs_due) < 16:  # bounded: a flood gets no echo
                self.pongs_due.append(token)
            elif flags & PONG and len(self.pongs_heard) < 16:
                self.pongs_heard.append((token, now))
            return  # no liveness or path MTU news in a ping
        if flags & HEARD_YOU:
            self._peer_heard_us_at = now
        if flags & PROBE:
            self.pmtu.probe_heard(datagram_len, now)
        self.pmtu.peer_reported(peer_heard)
        self.state.datagram_size = self.pmtu.datagram_size

    def path_too_small(self) -> None:
        self.pmtu.too_small()
        self.state.datagram_size = self.pmtu.datagram_size

    def inherit_liveness(self, other: DataSession) -> None:
        """A connection that replaces ``other`` to the same peer and address
        (re-keyed): UDP was flowing both ways a moment ago, and still is."""
        self.state.heard_at = other.state.heard_at
        self._peer_heard_us_at = other._peer_heard_us_at

    def hears_peer(self, now: float) -> bool:
        return now - self.heard_at < self.udp_timeout

    def established(self, now: float) -> bool:
        """True when authenticated UDP flows both ways."""
        return self.hears_peer(now) and now - self._peer_heard_us_at < self.udp_timeout
