"""The mesh core (sans-IO): peer lifecycle, tie-breaks, targets, discovery, gossip, relaying.

The trio shell (``router``) owns the sockets and the clock; this class makes
every decision.  The shell feeds it inputs, each with ``now``:

* ``open_connection`` when a TCP connection is accepted or dialled, then the
  connection's bytes (``receive_data``), end of stream (``receive_eof``) and
  timers (``get_timer``/``handle_timer``), and ``connection_lost`` when its
  task has ended;
* ``dials_due``/``dial_failed`` for the connection maker;
* ``tick`` twice a second; operator requests (``connect``, ``forget``,
  ``rmpeer``, ``close_all``).

and carries out what ``take_actions()`` returns: ``Flush`` (a connection has
bytes to send: ``data_to_send``), ``Close`` (flush, then end the connection's
task), ``TargetsChanged`` (wake the connection maker), ``LinkUp`` (a link was
published: let the forwarder send its first heartbeat now).

Each connection is in one ``ConnState``; it moves only along ``TRANSITIONS``
(h11's ``_state.py`` is the model)::

    HANDSHAKE --handshake done--> PENDING --UDP both ways--> ESTABLISHED
        |                            ^ |                          |
        |                            | +-------UDP lost-----------+
        +--------------------------- close (any state) ---------------> CLOSED

Rules that span connections:

* Duplicate connections (both peers dialled): keep the one dialled by the
  peer with the larger name; both ends compute the same answer.  The loser
  hands its target to the winner.  A connection from a restarted peer (new
  uid) replaces the old one.
* Only handshaken connections are *peers*; their ``Link`` (the data path) is
  published in the ``LinkTable`` the forwarder reads, and withdrawn when the
  connection closes.  Our own gossip record lists them, established or not.
* Subsystems (IPAM, DNS, the fast path) are *channels* (``channel``): each
  owns one message type, and the core dispatches from one table, sends each
  new peer their ``hello``, ticks them and drains their outboxes.  A
  channel's message to a peer with no direct connection is relayed like
  data: a route header (origin, destination, hops left) in front, passed hop
  by hop (IPAM's, as IPAM_RELAYED).

Randomness (receiver indices, the uid, backoff jitter) comes from the ``rng``
the shell passes in; time only ever comes in as ``now``.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from meshrouter.base.errors import BadInput, BadPacket, LocalProtocolError
from meshrouter.base.inputs import format_address
from meshrouter.base.lograte import LogLimiter
from meshrouter.base.names import format_name
from meshrouter.contract.status import (
    ConnectionStatus,
    ConnState,
    MeshStatus,
    PeerStatus,
    TargetState,
    TargetStatus,
)
from meshrouter.dataplane.link import Link, LinkTable
from meshrouter.dataplane.session import DataSession
from meshrouter.mesh.channel import Broadcast, Channel, View
from meshrouter.mesh.targets import Target, Targets
from meshrouter.mesh.topology import ConnInfo, Gossip
from meshrouter.proto.control import (
    ConnectionClosed,
    ControlConnection,
    HandshakeComplete,
    MessageReceived,
    MessageType,
    State,
)
from meshrouter.proto.crypto import SUITES
from meshrouter.proto.handshake import HandshakeResult, Identity
from meshrouter.proto.keyring import KeyRing, decode_rotate_untrusted, encode_rotate
from meshrouter.proto.wire import MAX_HOPS, ROUTE, parse_route_header_untrusted

SUPERSEDED_GRACE = 5.0  # a re-keyed connection the dialler did not close by then: closed
REKEY_RETRY = 10.0  # a rotation's replacement connection not made by then: dialled again
log = logging.getLogger("meshrouter")

FULL_GOSSIP_INTERVAL = 30.0
CLOCK = struct.Struct("!d")


def parse_clock_untrusted(payload: bytes) -> tuple[float, str]:
    """A CLOCK message: (wall clock, version).  Raises only BadPacket."""
    if len(payload) < CLOCK.size or len(payload) > CLOCK.size + 64:
        raise BadPacket("CLOCK message of the wrong length")
    (wall,) = CLOCK.unpack_from(payload)
    if not math.isfinite(wall):
        raise BadPacket("CLOCK is not a finite time")
    return wall, payload[CLOCK.size :].decode("utf-8", "replace")


class Input(Enum):
    HANDSHAKE_DONE = "handshake done"
    UDP_UP = "UDP heard both ways"
    UDP_DOWN = "UDP lost"
    CLOSE = "close"


TRANSITIONS: dict[ConnState, dict[Input, ConnState]] = {
    ConnState.HANDSHAKE: {
        Input.HANDSHAKE_DONE: ConnState.PENDING,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.PENDING: {
        Input.UDP_UP: ConnState.ESTABLISHED,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.ESTABLISHED: {
        Input.UDP_DOWN: ConnState.PENDING,
        Input.CLOSE: ConnState.CLOSED,
    },
    ConnState.CLOSED: {},
}


# -- what the shell gives and gets ------------------------------------------------


class Rng(Protocol):
    def getrandbits(self, k: int, /) -> int: ...
    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True, slots=True)
class Flush:
    index: int


@dataclass(frozen=True, slots=True)
class Close:
    index: int


@dataclass(frozen=True, slots=True)
class TargetsChanged:
    pass


@dataclass(frozen=True, slots=True)
class LinkUp:
    pass


@dataclass(frozen=True, slots=True)
class Redial:
    """Dial ``address`` now, beside the connection it has (re-keying it)."""

    address: str


@dataclass(frozen=True, slots=True)
class KeysChanged:
    """The key ring changed (a rotation adopted, a key retired): persist it."""


Action = Flush | Close | TargetsChanged | LinkUp | KeysChanged | Redial


@dataclass(eq=False)
class Conn:
    """The core's record of one control connection."""

    index: int  # our receiver index: unique among live connections
    control: ControlConnection
    remote: tuple[str, int]
    initiator: bool
    target: str | None  # the target this connection serves, if any
    state: ConnState = ConnState.HANDSHAKE
    name: bytes = b""  # the peer's, once the handshake is done
    link: Link | None = None
    listen_addr: str = ""  # where the peer accepts connections, host:port
    connected_at: float = 0.0
    clock_skew: float | None = None  # the peer's wall clock minus ours, seconds
    peer_version: str = ""  # its software version, from CLOCK
    key_epoch: int = 0  # the epoch of the mesh key the handshake proved
    rekey_asked: float = -1e18  # when we last dialled a replacement under a newer key
    superseded_at: float | None = None  # replaced by a re-keyed one; the dialler closes it

    @property
    def result(self) -> HandshakeResult | None:
        return self.control.result

    @property
    def label(self) -> str:
        res = self.control.result
        return "peer" if res is None else f"{format_name(self.name)}({res.peer.nickname})"

    @property
    def where(self) -> str:
        return format_address(*self.remote)


class Mesh:
    def __init__(
        self,
        *,
        name: bytes,
        nickname: str,
        psk: bytes,
        port: int,
        ipalloc_range: str,
        peers: list[str],
        rng: Rng,
        channels: Sequence[Channel] = (),
        conn_limit: int = 100,
        gc_after: float = 60.0,
        now: float = 0.0,
        version: str = "",
        keys: KeyRing | None = None,
    ) -> None:
        self.me = name
        self.name = format_name(name)
        self.nickname = nickname
        self.keys = keys if keys is not None else KeyRing(current=psk)
        self._rng = rng
        self.uid = rng.getrandbits(64)
        self.identity = Identity(
            name=name, nickname=nickname, uid=self.uid, udp_port=port, ipalloc_range=ipalloc_range
        )
        self.channels = list(channels)
        self._handlers: dict[int, Callable[[Conn, bytes, float], None]] = {
            MessageType.GOSSIP: self._on_gossip,
            MessageType.CLOCK: self._on_clock,
            MessageType.ROTATE: self._on_rotate,
        }
        for ch in self.channels:
            self._handlers[ch.mtype] = self._receiver(ch)
            if ch.relayed is not None:
                self._handlers[ch.relayed] = self._relay_receiver(ch)
        self.conn_limit = conn_limit
        self.gossip = Gossip(name, self.uid, nickname, gc_after=gc_after)
        self.targets = Targets(port)
        self.counters: Counter[str] = Counter()
        for p in peers:
            try:
                self.targets.add(p, now)
            except BadInput as exc:  # a saved target no release would take now: never fatal
                self.counters["targets_skipped"] += 1
                log.warning("skipping connection target %r: %s", p, exc)
        self.links = LinkTable(self.gossip.routes())
        self.conns: dict[int, Conn] = {}  # every live connection, by receiver index
        self.peers: dict[bytes, Conn] = {}  # handshake complete, not closed, by peer name
        self._actions: deque[Action] = deque()
        self._limiter = LogLimiter()
        self._next_full_gossip = now + FULL_GOSSIP_INTERVAL
        self.version = version
        self._wall_offset: float | None = None  # wall clock minus ``now``, from tick()

    # -- output -----------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        out = list(self._actions)
        self._actions.clear()
        return out

    def data_to_send(self, index: int) -> bytes:
        conn = self.conns.get(index)
        return conn.control.data_to_send() if conn is not None else b""

    def get_timer(self, index: int) -> float:
        return self.conns[index].control.get_timer()

    def is_open(self, index: int) -> bool:
        conn = self.conns.get(index)
        return conn is not None and conn.control.state is not State.CLOSED

    def neighbours(self) -> list[bytes]:
        return list(self.peers)

    # -- connections ------------------------------------------------------------

    def open_connection(
        self,
        *,
        initiator: bool,
        remote: tuple[str, int],
        now: float,
        ephemeral: bytes,
        target: str | None = None,
    ) -> int | None:
        """A TCP connection is up.  Returns its index, or None when an inbound
        one is refused (at ``conn_limit``; the shell just closes it)."""
        if not initiator and len(self.conns) >= self.conn_limit:
            self.counters["connections_refused_limit"] += 1
            where = format_address(*remote)
            self._log_limited(
                logging.WARNING,
                where,
                "limit",
                "connection from %s refused: at the connection limit (%d, --conn-limit)",
                where,
                self.conn_limit,
                now=now,
            )
            return None
        index = self._new_index()
        control = ControlConnection(
            initiator=initiator,
            identity=self.identity,
            psk=self.keys,
            ephemeral_private=ephemeral,
            recv_index=index,
            now=now,
        )
        self.conns[index] = Conn(index, control, remote, initiator, target)
        return index

    def _new_index(self) -> int:
        while True:
            index = self._rng.getrandbits(32)
            if index and index not in self.conns:
                return index

    def receive_data(self, index: int, data: bytes, now: float) -> None:
        conn = self.conns[index]
        conn.control.receive_data(data, now)
        self._process(conn, now)

    def receive_eof(self, index: int, now: float, detail: str = "") -> None:
        conn = self.conns[index]
        if conn.control.state is not State.CLOSED:
            conn.control.receive_eof(now)
            self._process(conn, now, detail)

    def handle_timer(self, index: int, now: float) -> None:
        conn = self.conns[index]
        conn.control.handle_timer(now)
        self._process(conn, now)

    def connection_lost(self, index: int, now: float) -> None:
        """The connection's task has ended: forget it; its target (if it still
        holds one) is retried with backoff."""
        conn = self.conns.pop(index, None)
        if conn is None:
            return
        if conn.state is not ConnState.CLOSED:
            self._closed(conn)
        survivor = self.peers.get(conn.name) if conn.name else None
        if survivor is not None:
            # The peer is still connected another way (the far end closed this
            # one as a duplicate first): that connection serves the target now.
            self._hand_target(conn, survivor)
        if conn.target is not None:
            self._target_failed(conn.target, conn.control.close_reason or "connection closed", now)

    def close_all(self, reason: str, now: float) -> None:
        for conn in list(self.conns.values()):
            self._close(conn, reason, now)

    def _close(self, conn: Conn, reason: str, now: float, cause: str = "local") -> None:
        """Close ``conn`` with ``reason`` (told to the peer), log it, and have
        the shell end its task."""
        if conn.control.state is State.CLOSED:
            return
        conn.control.close(reason)
        self._log_closed(conn, reason, cause, now)
        self._process(conn, now)
        self._actions.append(Close(conn.index))

    def _transition(self, conn: Conn, event: Input) -> None:
        new = TRANSITIONS[conn.state].get(event)
        if new is None:
            raise LocalProtocolError(f"connection {conn.label}: {event.value} in {conn.state}")
        conn.state = new

    def _process(self, conn: Conn, now: float, detail: str = "") -> None:
        """Act on what the control connection says happened."""
        while (ev := conn.control.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                self._on_handshake(conn, ev.result, now)
            elif isinstance(ev, ConnectionClosed):
                if ev.cause != "local":
                    reason = f"{ev.reason} ({detail})" if detail else ev.reason
                    self._log_closed(conn, reason, ev.cause, now)
                self._closed(conn)
            elif isinstance(ev, MessageReceived):
                self._on_message(conn, ev, now)

    def _closed(self, conn: Conn) -> None:
        """The connection is closed: it is no peer any more, its link is withdrawn."""
        if conn.state is ConnState.CLOSED:
            return
        self._transition(conn, Input.CLOSE)
        if conn.link is not None:
            self.links.withdraw(conn.link)
        if self.peers.get(conn.name) is conn:
            del self.peers[conn.name]
            self._update_own_record()
            for ch in self.channels:
                ch.peer_down(conn.name)
            self._flush_channels()

    def _log_closed(self, conn: Conn, reason: str, cause: str, now: float) -> None:
        if conn.result is None:
            # Before the handshake anyone can cause this line (connect, close,
            # again): at most one a minute per address and reason.
            self.counters["handshake_failures" if cause == "error" else "connections_closed"] += 1
            self._log_limited(
                logging.WARNING if cause == "error" else logging.INFO,
                conn.where,
                reason,
                "connection %s at %s %s: %s",
                conn.label,
                conn.where,
                "refused" if cause == "error" else "closed before the handshake",
                reason,
                now=now,
            )
        else:
            self.counters["connections_closed"] += 1
            log.info("connection %s at %s closed: %s", conn.label, conn.where, reason)

    def _log_limited(
        self, level: int, where: str, kind: str, msg: str, *args: object, now: float
    ) -> None:
        """The same kind of complaint about the same address at most once per
        ``LogLimiter.interval``, saying how many were held back."""
        held = self._limiter.allow((where.rsplit(":", 1)[0], kind), now)
        if held is None:
            return
        if held:
            msg += f" ({held} more like it in the last {self._limiter.interval:.0f}s not logged)"
        log.log(level, msg, *args)

    # -- the handshake and its tie-breaks ------------------------------------------

    def _on_handshake(self, conn: Conn, res: HandshakeResult, now: float) -> None:
        if res.peer.name == self.me:  # a target that is this router (a name of this host)
            self.counters["connections_to_self"] += 1
            if conn.target is not None and self.targets.remove(conn.target) is not None:
                log.warning("target %s is this router itself: forgotten", conn.target)
                self._actions.append(TargetsChanged())
                conn.target = None
            self._close(conn, "connection to self", now)
            return
        conn.name = res.peer.name
        conn.key_epoch = self.keys.epoch_of(res.psk)
        old = self.peers.get(conn.name)
        replaced: Conn | None = None  # a connection this one re-keys
        if old is not None:
            if old.result is not None and old.result.peer.uid != res.peer.uid:
                self._close(old, "peer restarted; replaced by new connection", now)
            else:
                loser = self._duplicate_loser(old, conn)
                self._hand_target(loser, old if loser is conn else conn)
                rekeyed = loser is old and old.key_epoch < conn.key_epoch
                if rekeyed and old.state is ConnState.ESTABLISHED:
                    replaced = old
                if rekeyed and not conn.initiator:
                    # The dialler closes the old one once its own handshake is
                    # done: closed here first, the close could reach it before
                    # our CONFIRM, a gap in its data path.  Until then what
                    # arrives on the old link is still taken.
                    old.superseded_at = now
                elif rekeyed:
                    self._close(loser, "re-keyed under the rotated mesh password", now)
                else:
                    self._close(loser, "duplicate connection", now)
                if loser is conn:
                    return
        self._transition(conn, Input.HANDSHAKE_DONE)
        self.peers[conn.name] = conn
        keys = res.keys
        conn.link = Link(
            index=conn.index,
            peer=conn.name,
            label=conn.label,
            session=DataSession(
                suite=keys.suite,
                send_key=keys.data_send,
                recv_key=keys.data_recv,
                local_index=conn.index,
                peer_index=res.peer_recv_index,
            ),
            udp_addr=(conn.remote[0], res.peer.udp_port),
        )
        if replaced is not None and replaced.link is not None:
            # Same peer, same path, a moment ago: no gap while UDP proves itself.
            conn.link.session.inherit_liveness(replaced.link.session)
        self.links.publish(conn.link, keep_old=replaced is not None and not conn.initiator)
        conn.listen_addr = format_address(conn.remote[0], res.peer.udp_port)
        conn.connected_at = now
        waiting = self.targets.get(conn.listen_addr)
        if conn.target is None and waiting is not None and waiting.state is TargetState.WAITING:
            conn.target = waiting.address  # the peer came to us first: no need to dial it
        if conn.target is not None:
            self.targets.connected(conn.target, format_name(conn.name))
        log.info(
            "connection %s at %s: handshake complete, %s, encrypted with %s, "
            "protocol v%d; waiting for UDP",
            conn.label,
            conn.where,
            "outbound" if conn.initiator else "inbound",
            SUITES[keys.suite].name,
            keys.version,
        )
        self._send_rotate(conn)
        self._send_gossip(conn, self.gossip.full())
        self._send_clock(conn, now)
        for ch in self.channels:
            for payload in ch.hello(conn.name, conn.remote[0], now):
                self._send(conn, ch.mtype, payload)
        if replaced is not None and conn.link.session.established(now):
            self._transition(conn, Input.UDP_UP)  # it inherited a working path
        self._update_own_record()
        self._actions.append(LinkUp())  # first UDP heartbeat now, not at the next tick

    def _hand_target(self, loser: Conn, winner: Conn) -> None:
        if loser.target is not None and winner.target is None:
            winner.target, loser.target = loser.target, None
            self.targets.connected(winner.target, format_name(winner.name))
        elif loser.target is not None and loser.target == winner.target:
            loser.target = None  # a replacement dialled for the same target: it serves it

    def _duplicate_loser(self, a: Conn, b: Conn) -> Conn:
        """Of two connections to one peer, the one to close: one under an older
        mesh key (a rotation's replacement wins), else the survivor is the one
        dialled by the peer with the larger name (both ends agree)."""
        if a.key_epoch != b.key_epoch:
            return a if a.key_epoch < b.key_epoch else b

        def dialler(c: Conn) -> bytes:
            return self.me if c.initiator else c.name

        return b if dialler(a) > dialler(b) else a

    # -- control messages -----------------------------------------------------------

    def _on_message(self, conn: Conn, ev: MessageReceived, now: float) -> None:
        handler = self._handlers.get(ev.type)
        if handler is None:
            self.counters["control_messages_unknown"] += 1
        else:
            handler(conn, ev.payload, now)

    def _on_gossip(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            fwd = self.gossip.receive_untrusted(payload)
        except BadPacket as exc:
            self.counters["gossip_errors"] += 1
            self._close(conn, f"bad gossip: {exc}", now, cause="error")
            return
        if fwd is not None:
            self._topology_changed()
            self._gossip_to_all(fwd, but=conn)

    def _on_clock(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            wall, version = parse_clock_untrusted(payload)
        except BadPacket:
            self.counters["control_messages_bad"] += 1
            return
        conn.peer_version = version
        if self._wall_offset is not None:
            conn.clock_skew = wall - (now + self._wall_offset)

    def _on_rotate(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            epoch, key, window = decode_rotate_untrusted(payload)
        except BadPacket:
            self.counters["control_messages_bad"] += 1
            return
        before = self.keys.epoch
        adopted = self.keys.receive(conn.name, epoch, key, window, now)
        if not adopted and self.keys.epoch != before:
            # Our key came by hand (a new password file) and now has its
            # number: connections made under it are under the current key.
            for c in self.peers.values():
                if c.key_epoch == before:
                    c.key_epoch = self.keys.epoch
            self._actions.append(KeysChanged())
        if adopted:
            self.counters["key_rotations_adopted"] += 1
            log.info(
                "the mesh password was rotated (epoch %d, from %s): the old one is "
                "accepted for %.0fs more",
                epoch,
                conn.label,
                window,
            )
            self._actions.append(KeysChanged())
            for other in list(self.peers.values()):
                self._send_rotate(other)  # the sender too: now it knows we hold it
        elif epoch < self.keys.epoch:
            self._send_rotate(conn)  # it is behind: it learns ours

    def _send(self, conn: Conn, mtype: int, payload: bytes) -> bool:
        if conn.control.state is not State.OPEN:
            return False
        conn.control.send_message(mtype, payload)
        self._actions.append(Flush(conn.index))
        return True

    def _send_gossip(self, conn: Conn, payload: bytes) -> None:
        if self._send(conn, MessageType.GOSSIP, payload):
            self.counters["gossip_bytes_sent"] += len(payload)

    def _gossip_to_all(self, payload: bytes, but: Conn | None = None) -> None:
        for conn in list(self.peers.values()):
            if conn is not but:
                self._send_gossip(conn, payload)

    def _send_rotate(self, conn: Conn) -> None:
        """Tell a neighbour our key since a rotation (sealed by the connection)."""
        if self.keys.epoch > 0:
            payload = encode_rotate(self.keys.epoch, self.keys.current, self.keys.window)
            self._send(conn, MessageType.ROTATE, payload)

    def rotate(self, key: bytes, now: float, window: float) -> int:
        """The operator gave a new mesh password (its key): adopt it and pass it
        on.  Returns the new epoch.  Raises ValueError for a key in use."""
        epoch = self.keys.rotate(key, now, window)
        self.counters["key_rotations_started"] += 1
        log.info(
            "mesh password rotated here (epoch %d): the old one is accepted for %.0fs",
            epoch,
            window,
        )
        self._actions.append(KeysChanged())
        for conn in list(self.peers.values()):
            self._send_rotate(conn)
        return epoch

    def _rekey_for_rotation(self, now: float) -> None:
        """One connection per tick made under an older key to a peer that holds
        the current one is closed: its target reconnects under the current key.
        When the window ends, connections under the retired key are closed."""
        if self.keys.tick(now):
            self._actions.append(KeysChanged())
            log.info("the previous mesh password is retired: peers still using it are refused")
        for conn in list(self.peers.values()):
            if conn.key_epoch >= self.keys.epoch:
                continue
            if not self.keys.in_window():
                self._close(conn, "its mesh password was rotated out", now)
                continue
            if self.keys.holders.get(conn.name, 0) < self.keys.epoch:
                continue  # the peer has not got the new key yet
            # Make before break: the side that dialled dials again beside it; the
            # new connection replaces this one when its handshake completes.
            if conn.target is not None and now - conn.rekey_asked >= REKEY_RETRY:
                conn.rekey_asked = now
                self.counters["rekeys_rotation"] += 1
                self._actions.append(Redial(conn.target))
                return
            if conn.target is None and now - conn.connected_at >= 3 * REKEY_RETRY:
                # The peer has not replaced it (no target for us): break, it redials.
                self._close(conn, "re-keying under the rotated mesh password", now)
                return

    def _send_clock(self, conn: Conn, now: float) -> None:
        if self._wall_offset is not None:
            self._send(
                conn,
                MessageType.CLOCK,
                CLOCK.pack(now + self._wall_offset) + self.version.encode()[:64],
            )

    def _update_own_record(self) -> None:
        conns = [
            ConnInfo(c.name, c.listen_addr, c.state is ConnState.ESTABLISHED, c.initiator)
            for c in self.peers.values()
        ]
        update = self.gossip.set_connections(conns)
        if update is not None:
            self._topology_changed()
            self._gossip_to_all(update)

    def _topology_changed(self) -> None:
        """Publish fresh routes for the forwarder (an object replaced whole)."""
        self.links.set_routes(self.gossip.routes())

    # -- channels -------------------------------------------------------------------

    def _receiver(self, ch: Channel) -> Callable[[Conn, bytes, float], None]:
        def receive(conn: Conn, payload: bytes, now: float) -> None:
            try:
                ch.receive_untrusted(conn.name, payload, now)
            except BadPacket as exc:
                self.counters[f"{ch.name}_errors"] += 1
                if ch.close_on_bad:
                    self._close(conn, f"bad {ch.what}: {exc}", now, cause="error")
            self._flush_channels()

        return receive

    def _relay_receiver(self, ch: Channel) -> Callable[[Conn, bytes, float], None]:
        def receive(conn: Conn, payload: bytes, now: float) -> None:
            self._on_relayed(ch, payload, now)
            self._flush_channels()

        return receive

    def drop_channel(self, ch: Channel) -> None:
        """Stop carrying ``ch`` (its subsystem could not start): its messages
        are then unknown ones."""
        self.channels.remove(ch)
        self._handlers.pop(ch.mtype, None)
        if ch.relayed is not None:
            self._handlers.pop(ch.relayed, None)

    def flush(self) -> None:
        """Send what the channels want sent (the shell calls this after it
        asked a channel for something outside a mesh event)."""
        self._flush_channels()

    def _flush_channels(self) -> None:
        for ch in self.channels:
            for msg in ch.messages_to_send():
                if isinstance(msg, Broadcast):
                    for name, conn in list(self.peers.items()):
                        if name != msg.but:
                            self._send(conn, ch.mtype, msg.payload)
                else:
                    self._send_to(ch, msg.peer, msg.payload)

    def _send_to(self, ch: Channel, name: bytes, payload: bytes) -> None:
        """To peer ``name``: directly, or relayed through the mesh (like a data
        frame) when there is no connection to it and the channel relays."""
        conn = self.peers.get(name)
        if conn is not None and self._send(conn, ch.mtype, payload):
            return
        if ch.relayed is None or not self._relay(ch, ROUTE.pack(self.me, name, MAX_HOPS) + payload):
            self.counters[f"{ch.name}_unsent"] += 1

    def _relay(self, ch: Channel, message: bytes) -> bool:
        """Pass a relayed message (route header first) one hop on."""
        assert ch.relayed is not None
        _origin, dst, _hops = ROUTE.unpack_from(message)
        hop = self.links.routes.next_hop.get(dst)
        conn = self.peers.get(hop) if hop is not None else None
        return conn is not None and self._send(conn, ch.relayed, message)

    def _on_relayed(self, ch: Channel, payload: bytes, now: float) -> None:
        try:
            origin, dst, hops = parse_route_header_untrusted(payload)
        except BadPacket:
            self.counters[f"{ch.name}_errors"] += 1
            return
        if dst != self.me:
            onward = payload[: ROUTE.size - 1] + bytes([max(hops - 1, 0)]) + payload[ROUTE.size :]
            if hops == 0 or origin == self.me or not self._relay(ch, onward):
                self.counters[f"{ch.name}_relay_dropped"] += 1
            else:
                self.counters[f"{ch.name}_relayed"] += 1
            return
        try:
            ch.receive_untrusted(origin, payload[ROUTE.size :], now)
        except BadPacket as exc:
            # The relaying peer is not to blame: count it, keep the connection.
            self.counters[f"{ch.name}_errors"] += 1
            who = format_name(origin)
            self._log_limited(
                logging.WARNING,
                who,
                f"bad relayed {ch.name}",
                "bad %s relayed from %s: %s",
                ch.what,
                who,
                exc,
                now=now,
            )

    # -- targets and the connection maker -----------------------------------------

    def connect(self, address: str, now: float) -> str:
        """The operator asks for a connection target.  Raises ValueError on a bad address."""
        t = self.targets.add(address, now)
        self._actions.append(TargetsChanged())
        log.info("target %s added", t.address)
        return t.address

    def forget(self, address: str, now: float) -> str | None:
        """Drop an operator's target and its connection; None if it was none."""
        t = self.targets.remove(address)
        if t is None or t.discovered:
            return None
        log.info("target %s forgotten", t.address)
        for conn in list(self.conns.values()):
            if conn.target == t.address:
                self._close(conn, "peer forgotten by operator", now)
        return t.address

    def dials_due(self, now: float) -> list[str]:
        """Addresses to dial now (refused ones wait, at the connection limit)."""
        out: list[str] = []
        for t in self.targets.due(now):
            if len(self.conns) + len(out) >= self.conn_limit:
                self._target_failed(t.address, "at the connection limit (--conn-limit)", now)
            else:
                out.append(t.address)
        return out

    def next_dial_at(self) -> float:
        return self.targets.next_deadline()

    def dial_failed(self, address: str, reason: str, now: float) -> None:
        self._target_failed(address, reason, now)

    def _target_failed(self, address: str, reason: str, now: float) -> None:
        self.targets.failed(address, reason, now, jitter=self._rng.uniform(0.5, 1.5))
        t = self.targets.get(address)
        if t is not None:
            log.info(
                "connection to %s failed: %s; retrying in %.1fs", address, reason, t.next_try - now
            )
        self._actions.append(TargetsChanged())

    def _sync_discovered(self, now: float) -> None:
        """Dial every peer the topology knows that we have no connection to."""
        operator = {t.address for t in self.targets if not t.discovered}
        wanted: set[str] = set()
        for name in self.gossip.records:
            if name != self.me and name not in self.peers:
                wanted |= self.gossip.addresses_of(name) - operator
        before = len(self.targets)
        self.targets.sync_discovered(wanted, now)
        if len(self.targets) != before:
            self._actions.append(TargetsChanged())

    # -- periodic work --------------------------------------------------------------

    def tick(self, now: float, wall: float | None = None) -> None:
        """Rekeys, UDP liveness, topology GC, IPAM, anti-entropy, discovery.
        ``wall`` (the wall clock, seconds) lets peers compare clocks."""
        if wall is not None:
            self._wall_offset = wall - now
        self._rekey_for_rotation(now)
        for conn in list(self.conns.values()):
            if conn.superseded_at is not None and now - conn.superseded_at > SUPERSEDED_GRACE:
                self._close(conn, "re-keyed under the rotated mesh password", now)
        changed = False
        for conn in list(self.peers.values()):
            assert conn.link is not None
            session = conn.link.session
            if session.needs_rekey() or conn.control.needs_rekey():
                # Fresh keys come with a fresh connection; the target (ours
                # or the peer's) reconnects within a second.
                self.counters["rekeys"] += 1
                self._close(conn, "rekeying: the session's nonces are used up", now)
                continue
            est = session.established(now)
            if est == (conn.state is ConnState.ESTABLISHED):
                continue
            changed = True
            if est:
                self._transition(conn, Input.UDP_UP)
                self.counters["connections_established"] += 1
                log.info(
                    "connection %s at %s established: UDP flows both ways", conn.label, conn.where
                )
            else:
                self._transition(conn, Input.UDP_DOWN)
                log.warning(
                    "connection %s: UDP lost (no heartbeat for %.0fs)",
                    conn.label,
                    session.udp_timeout,
                )
        if changed:
            self._update_own_record()
        gone = self.gossip.gc(now)
        for name in gone:
            log.info(
                "peer %s forgotten: unreachable for %.0fs", format_name(name), self.gossip.gc_after
            )
        for name in gone:
            for ch in self.channels:
                ch.peer_gone(name)
        if gone:
            self._topology_changed()
        view = View(reachable=self.gossip.reachable(), neighbours=set(self.peers))
        for ch in self.channels:
            ch.tick(now, view)
        self._flush_channels()
        if now >= self._next_full_gossip:
            self._next_full_gossip = now + FULL_GOSSIP_INTERVAL
            self._gossip_to_all(self.gossip.full())
            for conn in list(self.peers.values()):
                self._send_clock(conn, now)
        self._sync_discovered(now)

    # -- introspection --------------------------------------------------------------

    def peers_named(self, who: str) -> list[bytes]:
        """The peers of the topology whose name or nickname is ``who``."""
        return [n for n, r in self.gossip.records.items() if who in (format_name(n), r.nickname)]

    def nickname_of(self, name: bytes) -> str:
        rec = self.gossip.records.get(name)
        return rec.nickname if rec is not None else "?"

    def status(self, now: float) -> MeshStatus:
        return {
            "name": self.name,
            "nickname": self.nickname,
            "uid": self.uid,
            "connections": list(self._connection_status(now)),
            "targets": [self._target_status(t, now) for t in self.targets],
            "peers": self._peer_status(),
            "counters": dict(self.counters),
            "gossip": {
                "bytes_sent": self.gossip.bytes_sent,
                "bytes_received": self.gossip.bytes_received,
            },
            "password": {
                "epoch": self.keys.epoch,
                "previous_accepted_for": (
                    round(max(0.0, self.keys.window_ends - now), 1)
                    if self.keys.in_window()
                    else 0.0
                ),
                "peers_with_current": sum(
                    self.keys.holders.get(n, 0) >= self.keys.epoch for n in self.peers
                ),
            },
        }

    def _connection_status(self, now: float) -> Iterator[ConnectionStatus]:
        for conn in list(self.peers.values()):
            res, link = conn.result, conn.link
            assert res is not None
            assert link is not None
            s = link.session
            yield {
                "peer": format_name(conn.name),
                "nickname": res.peer.nickname,
                "address": conn.where,
                "udp_address": format_address(*link.udp_addr) if link.udp_addr else None,
                "direction": "outbound" if conn.initiator else "inbound",
                "state": conn.state.value,
                "encrypted": True,
                "cipher": SUITES[res.keys.suite].name,
                "protocol_version": res.keys.version,
                "uptime": round(now - conn.connected_at, 1),
                "clock_skew": None if conn.clock_skew is None else round(conn.clock_skew, 3),
                "peer_version": conn.peer_version,
                "key_epoch": conn.key_epoch,
                "path": "sleeve",  # the daemon says which, with a fast path
                "datagram_size": s.datagram_size,
                "pmtu_confirmed": s.pmtu.confirmed,
                "tx_messages": s.state.tx_messages,
                "rx_messages": s.state.rx_messages,
                "reassembly_drops": s.reassembly_drops,
                "tx_packets": s.state.tx_packets,
                "rx_packets": s.state.rx_packets,
                "tx_frames": s.state.tx_frames,
                "rx_frames": s.state.rx_frames,
                "tx_bytes": s.state.tx_bytes,
                "rx_bytes": s.state.rx_bytes,
            }
        for conn in list(self.conns.values()):
            if conn.state is ConnState.HANDSHAKE:
                yield {
                    "peer": None,
                    "address": conn.where,
                    "direction": "outbound" if conn.initiator else "inbound",
                    "state": conn.state.value,
                    "encrypted": False,
                }

    @staticmethod
    def _target_status(t: Target, now: float) -> TargetStatus:
        return {
            "address": t.address,
            "state": t.state,
            "discovered": t.discovered,
            "peer": t.peer,
            "attempts": t.attempts,
            "last_error": t.last_error,
            "next_try_in": (
                round(max(0.0, t.next_try - now), 1) if t.state is TargetState.WAITING else None
            ),
        }

    def _peer_status(self) -> list[PeerStatus]:
        routes = self.links.routes
        out: list[PeerStatus] = []
        for name, rec in sorted(self.gossip.records.items()):
            hop = routes.next_hop.get(name)
            out.append(
                {
                    "peer": format_name(name),
                    "nickname": rec.nickname,
                    "uid": rec.uid,
                    "version": rec.version,
                    "reachable": name == self.me or hop is not None,
                    "via": None if hop is None or hop == name else format_name(hop),
                    "connections": [
                        {
                            "peer": format_name(c.peer),
                            "address": c.address,
                            "established": c.established,
                            "outbound": c.outbound,
                        }
                        for c in rec.connections
                    ],
                }
            )
        return out
