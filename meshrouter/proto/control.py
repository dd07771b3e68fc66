"""A control connection over TCP 6783 (sans-IO), in the style of aioquic/h11.

The shell feeds it bytes with ``receive_data(data, now)``, sends whatever
``data_to_send()`` returns, drains ``next_event()`` and calls
``handle_timer(now)`` when ``get_timer()`` passes.  It never raises on bad
input from the peer: a protocol error closes the connection and yields a
``ConnectionClosed`` event carrying the reason.

After the handshake every frame is ``len(4) || AEAD(type || payload)`` with the
length as associated data and an implicit per-direction counter nonce (TCP
delivers in order, so the counter is never sent).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum, IntEnum

from meshrouter.base.constants import (
    CONTROL_SILENCE_LIMIT,
    HANDSHAKE_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_CONTROL_MESSAGE,
    REKEY_AFTER_MESSAGES,
)
from meshrouter.base.errors import (
    BadPacket,
    HandshakeRefused,
    LocalProtocolError,
    RemoteProtocolError,
)
from meshrouter.proto.crypto import Opener, Sealer
from meshrouter.proto.framing import LENGTH, FrameReader, encode_frame
from meshrouter.proto.handshake import (
    Credentials,
    Handshake,
    HandshakeResult,
    Identity,
    PskSource,
    SessionKeys,
    encode_reject,
)


class MessageType(IntEnum):
    HEARTBEAT = 1
    CLOSE = 2
    GOSSIP = 3
    IPAM = 4
    IPAM_RELAYED = 5  # route header (origin, destination, hops left) || an IPAM message
    DNS = 6  # DNS entries (``dnsrecords``), merged and passed on
    CLOCK = 7  # the sender's wall clock (f64, seconds) || its software version (utf-8)
    ROTATE = 8  # a rotated mesh key: epoch || key || window seconds (``keyring``)
    FASTPATH = 9  # trust and kernel-path health between two peers (``fastpath``)
    REVOKE = 10  # a revocation signed by the mesh CA (``cert``), flooded
    AUTH = 11  # how the sender can authenticate now (AUTH_* bits, one byte): it got a certificate
    RETIRE_PASSWORD = 12  # the mesh moved to certificates: the password is refused, flooded
    OBSERVED = 13  # how the sender sees the receiver: TCP and UDP source addresses (``nat``)
    TUNNEL = 14  # a control stream through a relay, for hole punching (``tunnel``)


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    result: HandshakeResult


@dataclass(frozen=True, slots=True)
class MessageReceived:
    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: str
    # "local": we closed (operator, shutdown); "remote": the peer sent CLOSE or
    # EOF; "error": the peer broke the protocol, failed authentication or timed out.
    cause: str


Event = HandshakeComplete | MessageReceived | ConnectionClosed


class State(Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class ControlConnection:
    def __init__(
        self,
        *,
        initiator: bool,
        identity: Identity,
        psk: bytes | PskSource,
        ephemeral_private: bytes,
        recv_index: int,
        now: float,
        credentials: Credentials | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.initiator = initiator
        self.state = State.HANDSHAKE
        self._hs = Handshake(
            initiator=initiator,
            identity=identity,
            psk=psk,
            ephemeral_private=ephemeral_private,
            recv_index=recv_index,
            credentials=credentials,
        )
        self._reader = FrameReader(MAX_CONTROL_MESSAGE)
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self._recv_counter = 0
        self.result: HandshakeResult | None = None
        self.close_reason: str | None = None
        self._hb_interval = heartbeat_interval
        self._hb_timeout = heartbeat_timeout
        self._deadline_handshake = now + handshake_timeout
        self._last_received = now
        self._alive_until = -math.inf  # the peer is known alive by other means (UDP)
        self._next_heartbeat = math.inf
        self.messages_sent = 0
        self.messages_received = 0
        for frame in self._hs.initial_frames():
            self._out += encode_frame(frame)

    # -- output ---------------------------------------------------------

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        if self.state is State.HANDSHAKE:
            return self._deadline_handshake
        if self.state is State.OPEN:
            return min(self._next_heartbeat, self._dead_at())
        return math.inf

    def _dead_at(self) -> float:
        """When the peer counts as gone: ``heartbeat_timeout`` after the last
        sign of life (a control message, or what ``peer_alive`` said), but no
        later than ``CONTROL_SILENCE_LIMIT`` after the last control message."""
        alive = max(self._last_received, self._alive_until)
        return min(alive + self._hb_timeout, self._last_received + CONTROL_SILENCE_LIMIT)

    def peer_alive(self, at: float, heartbeat_interval: float, now: float) -> None:
        """The peer was heard otherwise at ``at`` (its UDP flows both ways):
        that counts as a sign of life, and our heartbeats, needed less, come
        every ``heartbeat_interval`` seconds from now on."""
        self._alive_until = max(self._alive_until, at)
        self._heartbeat_every(heartbeat_interval, now)

    def peer_not_heard(self, heartbeat_interval: float, now: float) -> None:
        """No other sign of life since the last: heartbeats every
        ``heartbeat_interval`` again (what was heard still counts)."""
        self._heartbeat_every(heartbeat_interval, now)

    def _heartbeat_every(self, interval: float, now: float) -> None:
        if interval != self._hb_interval:
            self._hb_interval = interval
            self._next_heartbeat = min(self._next_heartbeat, now + interval)

    # -- input ----------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if self.state is State.HANDSHAKE and now >= self._deadline_handshake:
            self._fail("handshake timed out")
        elif self.state is State.OPEN:
            if now >= self._dead_at():
                silent = now - self._last_received
                self._fail(f"no heartbeat from peer for {max(self._hb_timeout, silent):.0f}s")
                return
            if now >= self._next_heartbeat:
                self._send(MessageType.HEARTBEAT, b"")
                self._next_heartbeat = now + self._hb_interval

    def receive_eof(self, now: float) -> None:
        if self.state is not State.CLOSED:
            self._closed("peer closed the TCP connection", "remote")

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            return
        self._reader.feed(data)
        self._last_received = now
        try:
            while self.state in (State.HANDSHAKE, State.OPEN):
                frame = self._reader.next_frame_untrusted()
                if frame is None:
                    break
                header, body = frame
                if self.state is State.HANDSHAKE:
                    self._handshake_frame(body, now)
                else:
                    self._message_frame(header, body)
        except HandshakeRefused as exc:
            keys = getattr(exc, "keys", None)
            if isinstance(keys, SessionKeys):
                self._sealer = Sealer(keys.suite, keys.control_send)
                self._send(MessageType.CLOSE, exc.reason.encode()[:200])
            elif exc.tell_peer:
                self._out += encode_frame(encode_reject(exc.reason))
            self._closed(exc.reason, "error")
        except RemoteProtocolError as exc:
            self._fail(f"protocol error: {exc}")

    def _handshake_frame(self, body: bytes, now: float) -> None:
        frames, result = self._hs.receive_frame_untrusted(body)
        for f in frames:
            self._out += encode_frame(f)
        if result is not None:
            self.result = result
            self._sealer = Sealer(result.keys.suite, result.keys.control_send)
            self._opener = Opener(result.keys.suite, result.keys.control_recv)
            self.state = State.OPEN
            self._next_heartbeat = now + self._hb_interval
            self._events.append(HandshakeComplete(result))

    def _message_frame(self, header: bytes, body: bytes) -> None:
        assert self._opener is not None
        plain = self._opener.open_untrusted(self._recv_counter, header, body)
        self._recv_counter += 1
        self.messages_received += 1
        if not plain:
            raise BadPacket("empty control message")
        mtype, payload = plain[0], plain[1:]
        if mtype == MessageType.HEARTBEAT:
            return
        if mtype == MessageType.CLOSE:
            reason = payload[:200].decode("utf-8", "replace") or "no reason given"
            self._closed(f"peer closed: {reason}", "remote")
            return
        self._events.append(MessageReceived(mtype, payload))

    def needs_rekey(self, limit: int = REKEY_AFTER_MESSAGES) -> bool:
        return self._sealer is not None and self._sealer.counter >= limit

    # -- local actions --------------------------------------------------

    def send_message(self, mtype: int, payload: bytes) -> None:
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send on a connection in state {self.state.value}")
        self._send(mtype, payload)

    def close(self, reason: str) -> None:
        """Close with a reason the peer will log.  Idempotent."""
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            self._send(MessageType.CLOSE, reason.encode()[:200])
        self._closed(reason, "local")

    def _send(self, mtype: int, payload: bytes) -> None:
        assert self._sealer is not None
        plain = bytes([mtype]) + payload
        size = len(plain) + self._sealer.info.tag_bytes
        if size > MAX_CONTROL_MESSAGE:
            raise LocalProtocolError(f"control message of {size} bytes is too large")
        header = LENGTH.pack(size)
        self._out += header + self._sealer.seal(self._sealer.next_counter(), header, plain)
        self.messages_sent += 1

    def _fail(self, reason: str) -> None:
        if self.state is State.OPEN:
            # Tell the peer why, so the reason is logged on both sides.
            self._send(MessageType.CLOSE, reason.encode()[:200])
        self._closed(reason, "error")

    def _closed(self, reason: str, cause: str) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        self._events.append(ConnectionClosed(reason, cause))
